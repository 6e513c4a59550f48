"""The papers' parameter tables, row by row, next to the python_ref models' counts.

Armour (Tables 1–4): DeiT / Armour and the Table 1 variants, LeViT / Armour / Armour+.
Vision Xformers (Tables 1–2): ViT, ViP, ViL, ViN, FNet, MLP-Mixer, plain and hybrid.
`compute_rows()` builds every model on the meta device (shapes only: a few seconds) and says,
per row, whether our count rounds to the paper's number; `armour-bench tables` prints them and
the tests check them (docs/models.md).

Counting conventions (docs/levit.md, docs/models.md):
- DeiT: every parameter.
- LeViT: after BatchNorm folding, both heads and the attention-bias tables included; the
  paper's LeViT-384 rows round the unfolded (training) count instead. Both counts are kept.
- Vision Xformers: torchsummary's count (weights and biases of submodules: no position
  embedding, class token or Linformer sequence projection); "all trainable" is kept beside it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal

import torch

from .fold import fold_batchnorm
from .registry import create_model
from .vix import summary_param_count


@dataclass(frozen=True)
class PaperRow:
    table: str          # which paper table
    label: str          # the paper's row name
    model: str          # python_ref.create_model name
    attention: str
    paper: str          # the paper's number as printed ("5.3" in millions, or "530,442" exact)
    baseline: str | None = None      # label of the row the Δ is taken against
    paper_delta: str | None = None   # the paper's printed Δ, if any
    hybrid: bool = False
    convention: str | None = None    # how the paper counted, when not the family's default (first) one


DEIT_TI, DEIT_TI_DIST = "deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"
T1 = "Armour Table 1: DeiT vs. Armour & its variants"
T2 = "Armour Table 2: LeViT 128S vs. Armour 128S/128S+"
T3 = "Armour Table 3: DeiT vs. Armour"
T4 = "Armour Table 4: LeViT vs. generalized Armour"
VX1 = "Vision Xformers Table 1: ViX on CIFAR-10"
VX2 = "Vision Xformers Table 2: hybrid ViX on CIFAR-10"

ROWS = [
    PaperRow(T1, "W_K=W_V", DEIT_TI, "shared_kv", "5.3", "DeiT-Ti"),
    PaperRow(T1, "W_Q=W_K diag", DEIT_TI, "shared_qk_nodiag", "5.3", "DeiT-Ti"),
    PaperRow(T1, "W_Q=W_K", DEIT_TI, "shared_qk", "5.3", "DeiT-Ti"),
    PaperRow(T1, "Armour-Ti", DEIT_TI, "armour", "5.3", "DeiT-Ti", "-7.8%"),
    PaperRow(T1, "DeiT-Ti", DEIT_TI, "regular", "5.7"),
    PaperRow(T1, "DeiT-Ti dist", DEIT_TI_DIST, "regular", "5.9"),
    PaperRow(T1, "Armour-Ti dist", DEIT_TI_DIST, "armour", "5.5", "DeiT-Ti dist", "-6.8%"),
    PaperRow(T1, "Armour-Ti dist / 1200", DEIT_TI_DIST, "armour", "5.5", "DeiT-Ti dist"),
    PaperRow(T2, "LeViT-128S", "levit_128s", "regular", "7.76"),
    PaperRow(T2, "Armour-128S", "levit_128s", "armour", "7.47", "LeViT-128S", "-3.7%"),
    PaperRow(T2, "Armour-128S+", "levit_128s", "armour_plus", "7.18", "LeViT-128S"),
    PaperRow(T3, "DeiT-Ti", DEIT_TI, "regular", "5.7"),
    PaperRow(T3, "Armour-Ti", DEIT_TI, "armour", "5.3", "DeiT-Ti", "-7.8%"),
    PaperRow(T3, "DeiT-S", "deit_small_patch16_224", "regular", "22.1"),
    PaperRow(T3, "Armour-S", "deit_small_patch16_224", "armour", "20.3", "DeiT-S", "-8.1%"),
    PaperRow(T3, "DeiT-B", "deit_base_patch16_224", "regular", "86.6"),
    PaperRow(T3, "Armour-B", "deit_base_patch16_224", "armour", "79.5", "DeiT-B", "-8.2%"),
    PaperRow(T4, "LeViT-192", "levit_192", "regular", "10.9"),
    PaperRow(T4, "Armour-192", "levit_192", "armour", "10.4", "LeViT-192", "-4.6%"),
    PaperRow(T4, "Armour-192+", "levit_192", "armour_plus", "9.8", "LeViT-192", "-10.1%"),
    PaperRow(T4, "LeViT-256", "levit_256", "regular", "18.9"),
    PaperRow(T4, "Armour-256", "levit_256", "armour", "17.9", "LeViT-256", "-5.3%"),
    PaperRow(T4, "Armour-256+", "levit_256", "armour_plus", "17.0", "LeViT-256", "-10.1%"),
    PaperRow(T4, "LeViT-384", "levit_384", "regular", "39.1", convention="unfolded"),
    PaperRow(T4, "Armour-384", "levit_384", "armour", "37.1", "LeViT-384", "-5.1%", convention="unfolded"),
    PaperRow(T4, "Armour-384+", "levit_384", "armour_plus", "35.0", "LeViT-384", "-10.5%", convention="unfolded"),
]
for _table, _prefix, _hybrid in ((VX1, "", False), (VX2, "Hybrid ", True)):
    _base = f"{_prefix}ViT"
    for _label, _attention, _plain, _hyb in (
            ("ViT", "softmax", "530,442", "623,178"),
            ("ViP", "performer", "531,978", "624,714"),
            ("ViL", "linformer", "415,754", "508,490"),
            ("ViN", "nystrom", "530,970", "623,706"),
            ("FNet", "fnet", "267,786", "360,522"),
            ("MLP-Mixer", "mixer", "8,533,002", "8,625,738")):
        ROWS.append(PaperRow(_table, _prefix + _label, "vix_cifar", _attention, _hyb if _hybrid else _plain,
                             None if _label == "ViT" else _base, hybrid=_hybrid))


def _counts(row: PaperRow, cache: dict) -> dict:
    """{convention: count} for the row's model, built once on the meta device."""
    key = (row.model, row.attention, row.hybrid)
    if key not in cache:
        def total(m):
            return sum(p.numel() for p in m.parameters())

        kwargs = {"hybrid": row.hybrid} if row.model == "vix_cifar" else {}
        with torch.device("meta"):
            model = create_model(row.model, attention=row.attention, **kwargs).eval()
            if row.model.startswith("levit"):
                cache[key] = {"folded": total(fold_batchnorm(model)), "unfolded": total(model)}
            elif row.model == "vix_cifar":
                cache[key] = {"torchsummary": summary_param_count(model), "all trainable": total(model)}
            else:
                cache[key] = {"all": total(model)}
    return cache[key]


def rounds_to(count: int, paper: str) -> bool:
    """Does `count` print as the paper's number (millions to the paper's decimals, or exact)?"""
    if "," in paper or "." not in paper:
        return count == int(paper.replace(",", ""))
    millions = Decimal(count) / Decimal(10 ** 6)
    return millions.quantize(Decimal(paper), rounding=ROUND_HALF_UP) == Decimal(paper)


def format_count(count: int, paper: str) -> str:
    if "," in paper:
        return f"{count:,}"
    return str((Decimal(count) / Decimal(10 ** 6)).quantize(Decimal(paper), rounding=ROUND_HALF_UP))


def compute_rows() -> list[dict]:
    """One dict per paper row: our counts per convention, the paper's number and Δ, and whether they agree."""
    cache, results = {}, []
    for row in ROWS:
        counts = _counts(row, cache)
        convention = row.convention or next(iter(counts))  # the family's default: folded / torchsummary / all
        ours = counts[convention]
        results.append(dict(asdict(row), counts=counts, convention=convention, ours=ours,
                            ours_printed=format_count(ours, row.paper), matches=rounds_to(ours, row.paper)))
    by_label = {(r["table"], r["label"]): r for r in results}
    for r in results:  # Δ against the baseline row, counted the same way
        base = by_label[r["table"], r["baseline"]]["counts"] if r["baseline"] else None
        r["delta"] = None if base is None else r["ours"] / base[r["convention"]] - 1.0
    return results


__all__ = ["PaperRow", "ROWS", "compute_rows", "rounds_to", "format_count"]
