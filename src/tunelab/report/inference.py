"""The cost of serving each method: the inference table, the sentence under it and the plot of
quality against latency. The numbers are the runs' own (summary.json ``inference``, measured by
tunelab.inference); a method that folds into the weights has them merged and unmerged."""

from __future__ import annotations

from tunelab.report.document import Block, Heading, Paragraph, Table
from tunelab.report.rows import Column, Row, table_cells

NOTE = ("Timed on the first test inputs after the test, in inference mode, each number the median over its "
        "calls: one example at a time (a request) and in batches of the evaluation batch size; for a causal LM "
        "also greedy decoding with the KV cache, per generated token. Methods that fold into the weights (LoRA "
        "and its variants, IA3) are timed as trained and merged.")


def served_ms(row: Row) -> tuple[float | None, bool]:
    """A row's batch-1 latency as it would be served (merged where it can be), and whether merged."""
    merged = row.mean("inference_merged_batch1_ms")
    return (merged, True) if merged is not None else (row.mean("inference_batch1_ms"), False)


def sentence(rows: list[Row]) -> str | None:
    """Each method's batch-1 latency against the fastest, merged where it can be."""
    timed = [(row, *served_ms(row)) for row in rows if served_ms(row)[0] is not None]
    models = [row.runs[0].summary.model for row, _, _ in timed]
    common = max(set(models), key=models.count) if models else None
    timed = [t for t in timed if t[0].runs[0].summary.model == common]  # the same model's methods against each other
    if len(timed) < 2:
        return None
    fastest = min(timed, key=lambda t: t[1])
    parts = []
    for row, ms, merged in sorted(timed, key=lambda t: t[1]):
        if row is fastest[0]:
            continue
        unmerged = row.mean("inference_batch1_ms")
        extra = f" (unmerged {100 * (unmerged / fastest[1] - 1):+.0f} %)" if merged and unmerged is not None else ""
        parts.append(f"{row.name}{' merged' if merged else ''} {100 * (ms / fastest[1] - 1):+.0f} %{extra}")
    return (f"One example at a time on {common}, against its fastest method ({fastest[0].name}, {fastest[1]:.2f} ms "
            f"per example): "
            f"{'; '.join(parts)}. Differences of a few percent are within the timing's noise.")


def section(rows: list[Row], columns: list[Column]) -> list[Block]:
    if not columns:
        return []
    found = sentence(rows)
    return [Heading("Inference cost"), Table(*table_cells(rows, columns), "inference"), Paragraph(NOTE),
            *([Paragraph(found)] if found else [])]
