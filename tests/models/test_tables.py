"""`armour-bench tables`: every paper row is printed, and every count rounds to the paper's number."""
import json

from armour_kernels import cli
from armour_kernels.benchmarks import tables


def test_tables_prints_every_row_and_writes_json(capsys, tmp_path):
    path = tmp_path / "tables.json"
    assert cli.main(["tables", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    for title in {row.table for row in tables.ROWS}:
        assert title in out
    lines = out.splitlines()
    for row in tables.ROWS:
        printed = [line for line in lines if line.startswith(f"{row.label} ") and row.attention in line]
        assert printed, f"row {row.label!r} ({row.attention}) missing"
        assert all("  yes" in line for line in printed), printed
    assert f"{len(tables.ROWS)}/{len(tables.ROWS)} parameter counts round to the papers' numbers." in out
    rows = json.loads(path.read_text())
    assert len(rows) == len(tables.ROWS) == 38
    assert all(r["matches"] for r in rows)
    deit_ti = next(r for r in rows if r["label"] == "DeiT-Ti")
    assert deit_ti["ours"] == 5_717_416 and deit_ti["paper"] == "5.7"
    armour_b = next(r for r in rows if r["label"] == "Armour-B")
    assert round(100 * armour_b["delta"], 1) == -8.2


def test_rounding_rule():
    assert tables._rounds_to(7_756_466, "7.76") and not tables._rounds_to(7_756_466, "7.75")
    assert tables._rounds_to(530_442, "530,442") and not tables._rounds_to(530_443, "530,442")
    assert tables._rounds_to(16_951_124, "17.0")
