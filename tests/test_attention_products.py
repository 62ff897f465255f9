"""The attention products' hand-written backwards (one batched matrix product per reduction, gradients in their
operands' layouts) against autograd's own derivatives of the plain products, in float64, for contiguous and
strided gradients."""

from __future__ import annotations

import pytest
import torch

from fdconv_zoo.layers.attention_products import layout_keeping_product, outer_product, scale_rows


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "strided"])
def test_scale_rows_gradients(channels_last):
    t = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    t.requires_grad_(True)
    s = torch.rand(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(scale_rows, (t, s))
    grad = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    expected = torch.autograd.grad(t * s[:, :, None, None], (t, s), grad)
    got = torch.autograd.grad(scale_rows(t, s), (t, s), grad)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_outer_product_gradients():
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(outer_product(a, b), a[:, :, None] * b[:, None, :])
    assert torch.autograd.gradcheck(outer_product, (a, b))
    grad = torch.randn(3, 6, 4, dtype=torch.float64).transpose(1, 2)  # a strided gradient
    expected = torch.autograd.grad(a[:, :, None] * b[:, None, :], (a, b), grad)
    for e, g in zip(expected, torch.autograd.grad(outer_product(a, b), (a, b), grad)):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_layout_keeping_product_gradients_keep_each_operands_strides():
    a = torch.randn(2, 4, 5, 3, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_(True)  # (2, 3, 4, 5)
    b = torch.randn(2, 3, 5, 4, dtype=torch.float64).transpose(2, 3).requires_grad_(True)
    assert torch.autograd.gradcheck(layout_keeping_product, (a, b))
    grad = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    expected = torch.autograd.grad(a * b, (a, b), grad)
    got = torch.autograd.grad(layout_keeping_product(a, b), (a, b), grad)
    for tensor, e, g in zip((a, b), expected, got):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
        assert g.stride() == tensor.stride() != e.stride()  # autograd's follows the incoming gradient's layout
    with pytest.raises(ValueError, match="tensors of one shape"):
        layout_keeping_product(a, b[:1])
