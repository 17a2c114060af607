"""The ``infosift`` command: argument parsing only; the work is the library's.

  select  infosift.select_file (select from a file of your own)   export  infosift.subset (a selection's rows)
  run     flows.pipeline, in a checkout                          evidence  flows.evidence, in a checkout

Bad input ends in one line ``error: <what>`` and exit code 65 (64 for a bad command line); nothing half-written
is left behind.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from infosift.errors import EXIT_BAD_INPUT, EXIT_USAGE, InfosiftError, end_progress_bars

FLOWS = {"run": "flows.pipeline", "evidence": "flows.evidence"}
PROG = "infosift"
DESCRIPTION = """Pick the most informative examples of an SFT dataset.

  infosift select DATA --selector NAME --budget N --out PATH   select from data of your own
  infosift export MANIFEST --format jsonl|parquet              write the rows a selection chose
  infosift run [...]                                           the whole pipeline (in a checkout)
  infosift evidence [...]                                      the evidence flow (in a checkout)
"""


class UsageError(InfosiftError):
    """A command line the parser rejects, or a verb run where it cannot work."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are the house's one line (``error: ...``), not a usage block and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def param_value(text: str) -> tuple[str, object]:
    """``key=value`` of --params, the value read as YAML (1.0 a float, true a bool, topk a string)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        return key, value


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", metavar="{select,export,run,evidence}", parser_class=Parser)
    verbs.required = True

    s = verbs.add_parser("select", help="select rows from a data file and write them as they were",
                         description="Embed DATA with the base model (features cached), run a selector, and "
                         "write the chosen rows exactly as they were in DATA, in selection order, with a "
                         "manifest beside them (<out name>.manifest.json).")  # fmt: skip
    s.add_argument("data", metavar="DATA", help="a .jsonl/.json/.parquet file, a datasets.save_to_disk folder, "
                   "or a registered dataset name (gsm8k)")  # fmt: skip
    s.add_argument("--selector", required=True, help="a registered selector: fishersft, random, sentence_od, ...")
    s.add_argument("--budget", required=True, type=int, help="how many examples, or tokens with --unit tokens")
    s.add_argument("--unit", default="examples", choices=("examples", "tokens"), help="what --budget counts")
    s.add_argument("--seed", type=int, default=0, help="seed of a randomised selector (default 0)")
    s.add_argument("--model", default=None, help="base model: a local HF dir, bundled:NAME or a hub id "
                   "(default: the bundled SmolLM2-135M-Instruct)")  # fmt: skip
    s.add_argument("--params", nargs="+", type=param_value, default=[], metavar="KEY=VALUE",
                   help="selector parameters, e.g. ridge=1.0")  # fmt: skip
    s.add_argument("--query", default=None, choices=("scores",), help="query signal for gip: the data's self-scores")
    s.add_argument("--out", required=True, help="where the chosen rows go: a .jsonl or .parquet path")
    s.add_argument("--prompt-field", default=None, help="field holding the prompt (default: recognised per row)")
    s.add_argument("--response-field", default=None, help="field holding the response (default: recognised per row)")
    s.add_argument("--split", default="train", help="split of a DatasetDict folder or a registered dataset")
    s.add_argument("--mirror-dir", default=None, help="folder of local dataset copies (<dir>/<name>/<split>.jsonl)")
    s.add_argument("--cache-dir", default=None, help="models and features cache (default: $INFOSIFT_CACHE "
                   "or ~/.cache/infosift)")  # fmt: skip
    s.add_argument("--max-length", type=int, default=512, help="tokens of a conversation that are embedded")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when there is one)")

    e = verbs.add_parser("export", help="write the rows a selection manifest chose",
                         description="Write the rows MANIFEST chose, in its order and exactly as they were "
                         "in DATA, as JSONL or Parquet.")  # fmt: skip
    e.add_argument("manifest", metavar="MANIFEST", help="a manifest.json of the pipeline or of infosift select")
    e.add_argument("--format", required=True, help="jsonl or parquet")
    e.add_argument("--data", default=None, help="the data the selection was made from (default: the file the "
                   "manifest records, else data/download/pool.jsonl here)")  # fmt: skip
    e.add_argument("--out", default=None, help="output path (default: beside the manifest)")
    e.add_argument("--prompt-field", default=None, help="field holding the prompt (default: as the selection read)")
    e.add_argument("--response-field", default=None, help="field holding the response (default: as the selection read)")

    for verb, module in FLOWS.items():
        f = verbs.add_parser(verb, add_help=False, help=f"run `python -m {module}` in this checkout",
                             description=f"Run `python -m {module}` in the current directory, which must be a "
                             "checkout of the infosift repository (with dvc.yaml); every other option is "
                             "passed on to it.")  # fmt: skip
        f.add_argument("-h", "--help", action="store_true", help="this help, then the flow's own options")
        f.set_defaults(module=module)
    return parser


def run_flow(module: str, args: list[str]) -> int:
    """``python -m module args`` in the current directory, a checkout with dvc.yaml; its exit code."""
    here = Path.cwd()
    if not (here / "dvc.yaml").is_file() or not (here / Path(*module.split("."))).with_suffix(".py").is_file():
        raise UsageError(f"{here}: not an infosift checkout (no dvc.yaml and {module}); run this in the repository")
    return subprocess.call([sys.executable, "-m", module, *args], cwd=here)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]) and run the verb; its exit code (bad input: one ``error:`` line)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):  # no hub unless the user asks
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
        if args.verb in FLOWS:
            if args.help:
                _flow_help(parser, args.verb)
                if not (Path.cwd() / "dvc.yaml").is_file():
                    return 0
                rest = ["--help"]
            return run_flow(args.module, rest)
        if rest:
            parser.parse_args(argv)  # the parser's own error for an unknown option
        if args.verb == "select":
            return _select(args)
        return _export(args)
    except SystemExit as e:  # --help, which argparse ends with sys.exit(0)
        return e.code if isinstance(e.code, int) else 0
    except (InfosiftError, OSError, ValueError) as e:  # what the stages take for bad input too
        end_progress_bars()
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, UsageError) else EXIT_BAD_INPUT


def _flow_help(parser: Parser, verb: str) -> None:
    for action in parser._subparsers._group_actions:  # noqa: SLF001 - argparse keeps subparsers here
        if verb in getattr(action, "choices", {}):
            action.choices[verb].print_help()


def _select(args: argparse.Namespace) -> int:
    from infosift.select_file import EmbedSettings, select_file

    select_file(
        args.data,
        args.out,
        selector=args.selector,
        budget=args.budget,
        unit=args.unit,
        seed=args.seed,
        params=dict(args.params),
        query=args.query,
        model=args.model,
        cache_dir=args.cache_dir,
        prompt_field=args.prompt_field,
        response_field=args.response_field,
        split=args.split,
        mirror_dir=args.mirror_dir,
        settings=EmbedSettings(max_length=args.max_length, device=args.device),
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from infosift.subset import export_selection

    out, n = export_selection(args.manifest, args.format, args.data, args.out, args.prompt_field, args.response_field)
    print(f"infosift export: {n} rows -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
