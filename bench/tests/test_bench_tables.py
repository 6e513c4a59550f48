"""`armour-bench tables`: a table per paper table, every row printed with its verdict, the count of
matches, and the rows as JSON. (The counts themselves are checked by the library's suite:
tests/models/test_tables.py.)"""
import json

from python_ref import paper_tables

from armour_bench import cli

# One row of each kind: a DeiT baseline and a row with a Δ against it, LeViT (folded and unfolded
# counts), a Vision Xformers model (torchsummary and all-trainable counts).
ROWS = [row for row in paper_tables.ROWS if (row.table, row.label) in {
    (paper_tables.T1, "DeiT-Ti"), (paper_tables.T1, "Armour-Ti"), (paper_tables.T2, "LeViT-128S"),
    (paper_tables.VX1, "ViN"), (paper_tables.VX1, "ViT")}]


def test_tables_prints_every_row_and_writes_json(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(paper_tables, "ROWS", ROWS)
    path = tmp_path / "tables.json"
    assert cli.main(["tables", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert paper_tables.T1 in out and paper_tables.T2 in out and paper_tables.VX1 in out
    lines = out.splitlines()
    for row in ROWS:
        printed = [line for line in lines if line.startswith(f"{row.label} ") and row.attention in line]
        assert len(printed) == 1 and "  yes" in printed[0], printed
    assert "5/5 parameter counts round to the papers' numbers." in out
    rows = json.loads(path.read_text())
    assert [r["label"] for r in rows] == [row.label for row in ROWS] and all(r["matches"] for r in rows)
    assert next(r for r in rows if r["label"] == "Armour-Ti")["paper_delta"] == "-7.8%"
    assert set(next(r for r in rows if r["label"] == "LeViT-128S")["counts"]) == {"folded", "unfolded"}


def test_overhead_per_call_runs_and_writes_its_table(tmp_path):
    """`python -m armour_bench.overhead <folder>`: a few rounds of each tiny call, the table written."""
    from armour_bench import overhead
    rows = overhead.per_call(rounds=2, calls=2)
    assert len(rows) == 4 and all(r["ours_us"] > 0 and r["torch_us"] > 0 for r in rows), rows
    overhead.write_per_call(str(tmp_path), rows)
    assert (tmp_path / "overhead-cpu.md").read_text().startswith("# Per-call overhead")
