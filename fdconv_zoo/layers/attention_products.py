"""Products with per-sample attentions whose backward reduces with one batched matrix product.

Autograd's backward of ``t * s`` (``s`` broadcast over ``t``'s trailing dimensions) computes ``s``'s gradient as a
product and a sum: a tensor-sized temporary and two kernels. Here it is one ``bmm`` of each row of the gradient with
the same row of ``t``: one kernel and no temporary, once per attention, layer and training step. The forwards are
the plain products. :func:`layout_keeping_product` multiplies two views laid out differently in memory (the
local attention and the weight image) and writes each gradient in its operand's own layout, where autograd would
write both in the incoming gradient's and then copy each.
"""

from __future__ import annotations

import torch

__all__ = ["layout_keeping_product", "outer_product", "scale_rows"]


class _ScaleRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(t, s)
        return t * s.view(*s.shape, *(1,) * (t.dim() - s.dim()))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # noqa: ANN001
        t, s = ctx.saved_tensors
        grad_t = grad * s.view(*s.shape, *(1,) * (t.dim() - s.dim())) if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            if grad.is_contiguous() and t.is_contiguous():  # each row of both is one run of memory
                rows = s.numel()
                grad_s = torch.bmm(grad.reshape(rows, 1, -1), t.reshape(rows, -1, 1)).view(s.shape)
            else:
                grad_s = (grad * t).flatten(s.dim()).sum(-1)
        return grad_t, grad_s


def scale_rows(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``t`` (B, R, ...) times ``s`` (B, R) over its trailing dimensions."""
    return _ScaleRows.apply(t, s)


class _OuterProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(a, b)
        return a[:, :, None] * b[:, None, :]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # noqa: ANN001
        a, b = ctx.saved_tensors
        grad_a = torch.bmm(grad, b[:, :, None]).squeeze(2) if ctx.needs_input_grad[0] else None
        grad_b = torch.bmm(a[:, None, :], grad).squeeze(1) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def outer_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, M, N): per sample, the outer product of ``a`` (B, M) and ``b`` (B, N)."""
    return _OuterProduct.apply(a, b)


class _LayoutKeepingProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # noqa: ANN001
        a, b = ctx.saved_tensors
        grad_a = torch.mul(grad, b, out=torch.empty_like(a)) if ctx.needs_input_grad[0] else None
        grad_b = torch.mul(grad, a, out=torch.empty_like(b)) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def layout_keeping_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a * b`` for two tensors of one shape (no broadcasting) whose gradients keep ``a``'s and ``b``'s strides."""
    if a.shape != b.shape:
        raise ValueError(
            f"layout_keeping_product multiplies tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return _LayoutKeepingProduct.apply(a, b)
