"""Attention masks as the attention op's dense bias: `attn_mask` / `is_causal` as SDPA takes them.

    attn_mask bool     True = the key takes part (SDPA's meaning): False → −inf in the bias
    attn_mask float    added to the scores as is (its gradient flows when it requires one)
    is_causal          query i sees keys j ≤ i (top-left aligned, as SDPA): the rest → −inf

Both broadcast to (B, H, Nq, Nk) as SDPA's attn_mask does. Given together they combine (SDPA
accepts both too): a key takes part when the mask lets it and it is not in the future. The bias
is built in the scores' compute dtype (q's), like SDPA requires of a float mask. A query row with
every key masked has output 0 and no gradient: what the op defines and what SDPA gives in torch 2.11.

Written in the TorchScript subset: the eager and the scripted forward share it.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor


def _check_mask(mask: Tensor, dtype: torch.dtype, device: torch.device, shape: List[int], owner: str):
    if mask.dtype != torch.bool and mask.dtype != dtype:
        raise TypeError(owner + ": attn_mask must be bool (True = take part) or the compute dtype "
                        + str(dtype) + " (an additive bias), got " + str(mask.dtype))
    if mask.device != device:
        raise TypeError(owner + ": attn_mask is on " + str(mask.device) + " but the attention runs on " + str(device))
    sizes = mask.shape
    broadcasts = len(sizes) <= len(shape)
    if broadcasts:
        for i in range(len(sizes)):
            size, target = sizes[len(sizes) - 1 - i], shape[len(shape) - 1 - i]
            if size != 1 and size != target:
                broadcasts = False
    if not broadcasts:
        raise ValueError(owner + ": attn_mask of shape " + str(list(sizes)) + " does not broadcast to (B, H, Nq, Nk) = "
                         + str(shape))


def mask_bias(attn_mask: Optional[Tensor], is_causal: bool, q: Tensor, k: Tensor, owner: str) -> Optional[Tensor]:
    """The op's dense bias for `attn_mask` / `is_causal` (None when there is neither); q, k are (B, N, H, D)."""
    nq, nk = q.shape[1], k.shape[1]
    causal: Optional[Tensor] = None
    if is_causal:
        causal = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril()
    if attn_mask is None:
        if causal is None:
            return None
        return _bool_to_bias(causal, q.dtype)
    _check_mask(attn_mask, q.dtype, q.device, [q.shape[0], q.shape[2], nq, nk], owner)
    if attn_mask.dtype == torch.bool:
        return _bool_to_bias(attn_mask if causal is None else attn_mask & causal, q.dtype)
    if causal is None:
        return attn_mask
    return attn_mask + _bool_to_bias(causal, q.dtype)


def _bool_to_bias(keep: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(keep.logical_not(), float("-inf"))


__all__ = ["mask_bias"]
