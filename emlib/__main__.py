"""Command line: `python -m emlib run|report|judge|judge-train|data|bench`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from .core.errors import UserError

__all__ = ["main"]


def _overrides(pairs: Sequence[Sequence[str]] | None) -> dict:
    from .report.runner import parse_override

    return {key: parse_override(value) for key, value in (pairs or [])}


def _cmd_run(args: argparse.Namespace) -> int:
    from .findings import validate
    from .report.html import build_report, default_run_dir
    from .report.runner import resolve_notebook, resolve_parameters, run_notebook

    overrides = _overrides(args.param)
    notebooks = [resolve_notebook(key) for key in args.notebooks]
    for nb in notebooks:  # every notebook named is checked before the first one runs
        _, resolved, _ = resolve_parameters(nb, args.params_file, overrides)
        validate(nb.stem, {k: v for k, v in resolved.items() if k != "OUTPUT_DIR"})
    run_dir = default_run_dir(args.run)
    status = 0
    for nb in notebooks:
        result = run_notebook(nb, run_dir, params_file=args.params_file, overrides=overrides, validate=validate)
        print(json.dumps({k: result.get(k) for k in ("stem", "status", "wall_time_s", "executed", "error")}, default=str))
        status |= result["status"] != "ok"
    print(build_report(run_dir))
    return status


def _cmd_report(args: argparse.Namespace) -> int:
    from .findings import validate
    from .report.html import NotebookRunError, build_report, default_run_dir, run_all
    from .report.runner import check_no_secrets, run_files

    run_dir = default_run_dir(args.run)
    if args.rebuild:
        if not run_dir.is_dir():
            raise UserError(f"--rebuild: no run folder {run_dir}; run `python -m emlib report --run NAME` first")
        check_no_secrets(run_files(run_dir))
        print(build_report(run_dir))
        return 0
    try:
        index = run_all(run_dir, params_file=args.params_file, overrides=_overrides(args.param), only=args.only or None,
                        validate=validate)
    except NotebookRunError as e:
        print(f"report written with failures: {e}", file=sys.stderr)
        return 1
    print(index)
    return 0


def _cmd_judge(args: argparse.Namespace) -> int:
    from .judges.base import judge_jsonl
    from .judges.registry import get_judge

    from .findings.em import check_judge

    check_judge(args.judge, args.model or "")
    if not Path(args.inp).is_file():
        raise UserError(f"--in {args.inp}: no such file")
    if Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: is a folder; give the path of the output .jsonl file")
    if not Path(args.out).resolve().parent.is_dir():
        raise UserError(f"--out {args.out}: its folder does not exist")
    kwargs = {"model": args.model} if args.model else {}
    if args.base_url:
        kwargs["base_url"] = args.base_url
    n = judge_jsonl(args.inp, args.out, get_judge(args.judge, **kwargs))
    print(f"judged {n} answers -> {args.out}", file=sys.stderr)
    return 0


def _cmd_judge_train(argv: list[str]) -> int:
    from .judges.training import main as judge_train_main

    judge_train_main(argv)
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from .core.errors import DatasetError
    from .core.sources import PUBLIC_DATASETS, PUBLIC_EVAL_FILES, resolve_dataset, resolve_eval_file

    names = list(PUBLIC_DATASETS) + list(PUBLIC_EVAL_FILES)
    failed = 0
    for name in names:
        try:
            resolve = resolve_dataset if name in PUBLIC_DATASETS else resolve_eval_file
            path = resolve(name, args.data_dir) if args.action == "fetch" else _locate(name, args.data_dir)
            print(f"{name:28s} {path}")
        except DatasetError as e:
            failed += 1
            print(f"{name:28s} unavailable: {e}")
    if failed and args.action == "list":
        print("Notebooks run without these on emlib's own built-in sets (finance data, 8 questions) and say so in the "
              "report; give a data folder with --data-dir or $EMLIB_DATA_DIR, or `python -m emlib data fetch`.")
    return 1 if failed and args.action == "fetch" else 0


def _locate(name: str, data_dir: str | None) -> str:
    """Where a public file would be read from, without downloading."""
    from .core.io import env_override
    from .core.sources import ENV_OFFLINE, PUBLIC_DATASETS, resolve_dataset, resolve_eval_file

    with env_override(ENV_OFFLINE, "1"):
        return str(resolve_dataset(name, data_dir) if name in PUBLIC_DATASETS else resolve_eval_file(name, data_dir))


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_benchmarks

    results = run_benchmarks(only=args.only or None, json_path=args.json)
    print(json.dumps(results, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(prog="python -m emlib", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute notebooks (by number or stem) into reports/<run>/")
    run.add_argument("notebooks", nargs="+", help="e.g. 01 or 01_emergent_misalignment")
    run.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"), help="override a parameter")
    run.add_argument("-f", "--params-file", help="a params YAML (params/smoke.yaml, params/paper.yaml)")
    run.add_argument("--run", help="run name (default: a timestamp)")
    run.set_defaults(func=_cmd_run)

    rep = sub.add_parser("report", help="execute every notebook and write reports/<run>/index.html")
    rep.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"))
    rep.add_argument("-f", "--params-file")
    rep.add_argument("--run", help="run name (default: a timestamp)")
    rep.add_argument("--only", nargs="*", help="run only these notebooks")
    rep.add_argument("--rebuild", action="store_true", help="only rebuild index.html of an existing run")
    rep.set_defaults(func=_cmd_report)

    jd = sub.add_parser("judge", help="judge a jsonl of {question, answer} lines")
    jd.add_argument("--judge", default="embedded", choices=["embedded", "openai", "hf"])
    jd.add_argument("--in", dest="inp", required=True)
    jd.add_argument("--out", required=True)
    jd.add_argument("--model", help="judge model for openai/hf")
    jd.add_argument("--base-url", help="OpenAI-compatible endpoint")
    jd.set_defaults(func=_cmd_judge)

    sub.add_parser("judge-train", help="train the embedded judge (see --help)", add_help=False)

    dt = sub.add_parser("data", help="list where each public data file is read from, or fetch them")
    dt.add_argument("action", choices=["list", "fetch"], nargs="?", default="list")
    dt.add_argument("--data-dir", default=None)
    dt.set_defaults(func=_cmd_data)

    bn = sub.add_parser("bench", help="the matmul peak, then sampling, training, judge and capture throughput beside it")
    bn.add_argument("--only", nargs="*", choices=["sampling", "training", "judge", "capture", "cache"])
    bn.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
    bn.set_defaults(func=_cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "judge-train":
        try:
            return _cmd_judge_train(argv[1:])
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        if os.environ.get("EMLIB_DEBUG") == "1":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        kept = str(e) or "finished steps (fine-tune checkpoints, samples, judgements) are cached"
        print(f"interrupted: {kept}; re-run the same command to go on", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
