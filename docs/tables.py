"""The result tables of the docs, generated from the committed result files (never copied by hand).

A page marks where a table goes and which file it comes from:

    <!-- table: results/evidence/contaminated/evidence.csv -->       each selector against random
    <!-- table: results/evidence/contaminated/evidence.csv controls -->  each selector against its control
    <!-- table: results/evidence/contaminated/sweep.csv -->            the learning-rate sweep
    <!-- table: results/compare/table.csv -->                          the pipeline's models, one row each
    <!-- table: results/bench/select-cpu.txt -->                       a bench's report (bench/ --out), as printed
    ...generated lines...
    <!-- /table -->

    python docs/tables.py           # rewrite every marked table from its file
    python docs/tables.py --check   # exit 1 naming each table that differs from its file (tests/test_docs.py)
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(r"(<!-- table: (\S+)( controls)? -->\n)(.*?)(<!-- /table -->)", re.DOTALL)


def _num(x: object, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def evidence_table(csv: Path, controls: bool = False) -> str:
    """evidence.csv as a readable table: against random (or, with ``controls``, against each control)."""
    df = pd.read_csv(csv)
    if "reference" not in df:  # files written before controls existed: every row is against random
        df["reference"] = "random"
    df = df[df["reference"] != "random"] if controls else df[df["reference"] == "random"]
    bad = "contaminated_share" in df and df["contaminated_share"].notna().any()
    head = ["selector", "budget", "steps", "tokens used"] + (["bad picked"] if bad else [])
    head += ["NLL mean ± se", "Δ vs " + ("control" if controls else "random") + " [95 % CI]", "seeds won",
             ("control" if controls else "random") + "-equivalent", "verdict"]  # fmt: skip
    if controls:
        head.insert(1, "control")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in df.to_dict("records"):
        ref = r["verdict"] == "reference"
        cells = [r["selector"], str(r["budget"]), _num(r.get("steps"), ".0f"), _num(r["tokens"], ".0f")]
        if controls:
            cells.insert(1, r["reference"])
        if bad:
            cells.append(_num(100 * r["contaminated_share"], ".0f") + " %")
        equiv = "–" if ref or pd.isna(r["random_equiv_x"]) else (
            ("~" if r["extrapolated"] in (True, "True") else "") + f"{r['random_equiv_x']:.2f}×")  # fmt: skip
        won = "–" if ref else f"{round(r['seeds_won'] * r['n_paired'])}/{r['n_paired']}"
        delta = "reference" if ref else f"{r['rel_pct']:+.2f} % [{r['rel_lo_pct']:+.2f}, {r['rel_hi_pct']:+.2f}]"
        cells += [f"{r['mean']:.4f} ± {r['se']:.4f}", delta, won, equiv, r["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_table(csv: Path) -> str:
    """sweep.csv: validation NLL per learning rate (mean, and the seeds' range)."""
    df = pd.read_csv(csv)
    lines = ["| learning rate | optimizer steps | validation NLL (mean) | seeds' range |", "|---|---|---|---|"]
    for r in df.to_dict("records"):
        lines.append(f"| {r['learning_rate']:g} | {r['steps']} | {r['validation_nll']:.4f} | "
                     f"{r['min']:.4f} – {r['max']:.4f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def models_table(csv: Path) -> str:
    """compare's table.csv: one row per model (base first, then by budget, random before the selector)."""
    df = pd.read_csv(csv)
    df = df.assign(_order=df["selector"].ne("random")).sort_values(["budget", "_order", "variant"], kind="stable")
    lines = ["| variant | tokens trained | examples | nll_per_token | GSM8K strict |", "|---|---|---|---|---|"]
    for r in df.to_dict("records"):
        n = r.get("gsm8k_n")
        gsm = "–" if n is None or pd.isna(n) else f"{round(r['gsm8k_exact_match_strict'] * n)}/{int(n)}"
        name = r["variant"] if r["selector"] == "base" else r["variant"].rsplit("-s", 1)[0]
        lines.append(f"| {name} | {_num(r['train_tokens'], '.0f')} | {_num(r['n_train'], '.0f')} | "
                     f"{r['nll_per_token']:.4f} | {gsm} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def report_block(txt: Path) -> str:
    """A bench's report file (its command, then what it printed) as one code block."""
    return "```\n" + txt.read_text().rstrip("\n") + "\n```\n"


def render(path: str, controls: bool) -> str:
    csv = ROOT / path
    if csv.suffix == ".txt":
        return report_block(csv)
    if csv.name == "table.csv":
        return models_table(csv)
    return sweep_table(csv) if csv.name == "sweep.csv" else evidence_table(csv, controls)


def sync(page: Path, check: bool) -> list[str]:
    """Rewrite (or, with ``check``, compare) every marked table of ``page``; the marks that differ."""
    text = page.read_text()
    stale: list[str] = []

    def fill(m: re.Match) -> str:
        fresh = render(m.group(2), bool(m.group(3)))
        if fresh != m.group(4):
            stale.append(f"{page.relative_to(ROOT)}: {m.group(2)}{m.group(3) or ''}")
        return m.group(1) + fresh + m.group(5)

    new = MARK.sub(fill, text)
    if not check and new != text:
        page.write_text(new)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a table differs")
    args = parser.parse_args(argv)
    stale = [s for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] for s in sync(page, args.check)]
    for s in stale:
        print(("differs from its file: " if args.check else "rewrote: ") + s)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
