"""The papers' parameter tables (python_ref.paper_tables): every count of the python_ref models
rounds to the paper's number (`armour-bench tables` prints the same rows)."""
from python_ref import paper_tables


def test_every_count_rounds_to_the_papers_number():
    rows = paper_tables.compute_rows()
    assert len(rows) == len(paper_tables.ROWS) == 38
    assert {r["table"] for r in rows} == {paper_tables.T1, paper_tables.T2, paper_tables.T3, paper_tables.T4,
                                         paper_tables.VX1, paper_tables.VX2}
    assert [r["label"] for r in rows if not r["matches"]] == []
    deit_ti = next(r for r in rows if r["label"] == "DeiT-Ti")
    assert deit_ti["ours"] == 5_717_416 and deit_ti["paper"] == "5.7"
    armour_b = next(r for r in rows if r["label"] == "Armour-B")
    assert round(100 * armour_b["delta"], 1) == -8.2


def test_rounding_rule():
    assert paper_tables.rounds_to(7_756_466, "7.76") and not paper_tables.rounds_to(7_756_466, "7.75")
    assert paper_tables.rounds_to(530_442, "530,442") and not paper_tables.rounds_to(530_443, "530,442")
    assert paper_tables.rounds_to(16_951_124, "17.0")
