"""One document, two renderers: the same blocks as Markdown and as self-contained HTML."""

from __future__ import annotations

import base64

from tunelab.report.document import BulletList, Code, Document, Heading, Image, Paragraph, Table, to_html, to_markdown

DOC = Document("Comparison: m on d", [
    Paragraph("From `runs/a`; **lora** is best."),
    Heading("Results"),
    Table(["method", "test accuracy"], [["lora", "0.8100 ± 0.0100"], ["a|b", "–"]], "results"),
    Image("pareto.png", "Test <accuracy>", b"\x89PNG fake"),
    BulletList(["`x`: failed", "`y`: not finished"]),
    Code("methods:\n  lora: {}\n\n", "yaml"),
])


def test_markdown():
    assert to_markdown(DOC) == (
        "# Comparison: m on d\n\n"
        "From `runs/a`; **lora** is best.\n\n"
        "## Results\n\n"
        "| method | test accuracy |\n|---|---:|\n| lora | 0.8100 ± 0.0100 |\n| a\\|b | – |\n\n"
        "![Test <accuracy>](pareto.png)\n\n"
        "- `x`: failed\n- `y`: not finished\n\n"
        "```yaml\nmethods:\n  lora: {}\n```\n")


def test_html_is_one_page_with_everything_inline():
    page = to_html(DOC)
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</body></html>")
    assert "<title>Comparison: m on d</title>" in page and "<h1>Comparison: m on d</h1>" in page
    assert "<p>From <code>runs/a</code>; <strong>lora</strong> is best.</p>" in page
    assert ('<table class="results"><thead><tr><th>method</th><th>test accuracy</th></tr></thead><tbody>'
            "<tr><td>lora</td><td>0.8100 ± 0.0100</td></tr><tr><td>a|b</td><td>–</td></tr></tbody></table>") in page
    encoded = base64.b64encode(b"\x89PNG fake").decode()
    assert f'<img alt="Test &lt;accuracy&gt;" src="data:image/png;base64,{encoded}">' in page
    assert "<ul><li><code>x</code>: failed</li><li><code>y</code>: not finished</li></ul>" in page
    assert "<pre>methods:\n  lora: {}\n\n</pre>" in page
    assert "pareto.png" not in page  # the image travels inside the page
