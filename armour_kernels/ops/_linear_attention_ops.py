"""How the Nyström and Performer ops reach their kernels: the dispatcher ops, and the one Triton path
the dispatcher cannot take.

Each family has two ops whose schemas are declared in C++ (csrc/torch_ops/schemas.cpp):
armour_kernels::<family>_fwd, which returns the output and what the backward needs, and
armour_kernels::<family>_bwd. The extension registers their CPU kernels and their autograd
(csrc/torch_ops/); here they get their fake kernels (shapes and dtypes, for torch.compile and
torch.export) and, for CUDA tensors, the Triton launchers (triton is imported on the first call).

The dispatcher picks a kernel by the tensors' device, so two calls cannot go through it: the
Triton kernels on CPU tensors (TRITON_INTERPRET=1, how they are tested without a GPU; the
dispatcher gives CPU tensors the C++ kernels), and the Triton kernels when the extension is not
built (no schemas). Those run on Python custom ops armour_kernels_triton::<family>_fwd / _bwd:
the same arguments, Triton launchers and fake kernels, and an autograd formula in Python that does
what the C++ one does. They are custom ops, not a torch.autograd.Function, so that
torch.compile(fullgraph=True) sees one opaque call, as it does for the dispatcher ops, instead of
tracing into the launchers.
"""
from __future__ import annotations

import torch

from .. import cpu  # loads the extension, which declares the dispatcher ops

NAMESPACE = "armour_kernels"
TRITON_NAMESPACE = "armour_kernels_triton"


def value_of(v) -> str:
    """The launchers' value choice: no v means the query is the value."""
    return "q" if v is None else "v"


def empty_if_none(t, like):
    """An op cannot return None: an empty tensor stands for 'no gradient'."""
    return t if t is not None else like.new_empty(0)


def _dispatcher_op(name: str):
    """torch.ops.armour_kernels.<name>.default, or None when the extension (and so the schema) is missing."""
    namespace = getattr(torch.ops, NAMESPACE)
    return getattr(namespace, name).default if cpu.built() and hasattr(namespace, name) else None


class LinearAttentionOps:
    """The forward and backward ops of one family, and which forward a call takes.

    `forward(*inputs, *options) -> (out, *saved)` and `backward(dout, *inputs, *saved, *options)
    -> one gradient per input` (or fewer: the last inputs then get none) call the Triton launchers
    with the ops' arguments; inputs are the forward's first `tensor_inputs` arguments (q, k, v and
    the conv weight or projection), options the rest. The fakes take the same arguments.
    """

    def __init__(self, family: str, forward, backward, forward_fake, backward_fake, tensor_inputs: int):
        self.tensor_inputs = tensor_inputs
        self.native = _dispatcher_op(f"{family}_fwd")
        if self.native is not None:
            for name, kernel, fake in ((f"{family}_fwd", forward, forward_fake),
                                       (f"{family}_bwd", backward, backward_fake)):
                torch.library.register_fake(f"{NAMESPACE}::{name}", fake)
                torch.library.register_kernel(f"{NAMESPACE}::{name}", "cuda", kernel)
        self.triton_forward = torch.library.custom_op(f"{TRITON_NAMESPACE}::{family}_fwd", forward, mutates_args=())
        self.triton_backward = torch.library.custom_op(f"{TRITON_NAMESPACE}::{family}_bwd", backward, mutates_args=())
        self.triton_forward.register_fake(forward_fake)
        self.triton_backward.register_fake(backward_fake)
        self.triton_forward.register_autograd(self._backward, setup_context=self._setup_context)

    def forward(self, path: str):
        """The forward op of a plan's path (armour_kernels.plan): the dispatcher op, or the Triton custom op."""
        return self.native if path == "dispatcher" else self.triton_forward

    # The Python autograd of the Triton-only ops, as csrc/torch_ops/linear_attention_autograd.cpp.
    def _setup_context(self, ctx, inputs, output):
        ctx.save_for_backward(*inputs[:self.tensor_inputs], *output[1:])
        ctx.options = inputs[self.tensor_inputs:]
        ctx.mark_non_differentiable(*output[1:])

    def _backward(self, ctx, dout, *_saved_grads):
        saved = ctx.saved_tensors
        grads = self.triton_backward(dout, *saved, *ctx.options)
        grads = [g if t is not None else None for g, t in zip(grads, saved[:self.tensor_inputs])]
        return (*grads, *[None] * (self.tensor_inputs - len(grads) + len(ctx.options)))
