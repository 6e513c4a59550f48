"""`armour-bench tables`: the papers' parameter columns next to the python_ref models' counts.

The rows and the counting live in python_ref.paper_tables (the tests check the same counts);
this prints them as one table per paper table, and writes them as JSON with --json.
Exit status 0 when every count rounds to the paper's number, 1 otherwise.
"""
from __future__ import annotations

import json

from python_ref.paper_tables import compute_rows


def _render(rows: list[dict]) -> str:
    lines, table = [], None
    header = f"{'model':<24}{'attention':<18}{'ours (count)':>14}  {'convention':<14}{'ours':>10}{'paper':>11}" \
             f"{'Δ ours':>9}{'Δ paper':>9}  match"
    for r in rows:
        if r["table"] != table:
            table = r["table"]
            lines += ["", table, header, "-" * len(header)]
        attention = r["attention"] + (" (hybrid)" if r["hybrid"] else "")
        delta = "-" if r["delta"] is None else f"{100 * r['delta']:+.1f}%"
        others = ", ".join(f"{k} {v:,}" for k, v in r["counts"].items() if k != r["convention"])
        lines.append(f"{r['label']:<24}{attention:<18}{r['ours']:>14,}  {r['convention']:<14}{r['ours_printed']:>10}"
                     f"{r['paper']:>11}{delta:>9}{r['paper_delta'] or '-':>9}  {'yes' if r['matches'] else 'NO'}"
                     + (f"   ({others})" if others else ""))
    matched = sum(r["matches"] for r in rows)
    lines += ["", f"{matched}/{len(rows)} parameter counts round to the papers' numbers."]
    return "\n".join(lines).lstrip("\n")


def add_arguments(parser):
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")


def run(args) -> int:
    rows = compute_rows()
    print(_render(rows))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0 if all(r["matches"] for r in rows) else 1
