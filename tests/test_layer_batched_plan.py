"""The CUDA plan (every step once for the whole batch, :mod:`fdconv_zoo.layers.batched_forward`), forced on this CPU
machine with ``planning_as``: the same function as the eager CPU plan (float64, outputs, gradients, batch-norm
statistics), no stale cached value after a parameter change, no host syncs, and a bounded number of ops."""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses

import pytest
import torch
from fdconv_testing import perturb_attention, relative_error
from torch.utils._python_dispatch import TorchDispatchMode

import fdconv_zoo.layers.fdconv as fdconv_module
from fdconv_zoo.layers import FDConv, FDConv1d, FDConv3d, execution, plan_execution, planning_as

CASES = [  # (class, arguments, input shape)
    (FDConv, dict(in_channels=32, out_channels=48, kernel_size=3, padding=1, bias=True), (3, 32, 9, 8)),
    (FDConv, dict(in_channels=48, out_channels=32, kernel_size=3, stride=2, padding=1, padding_mode="reflect"), (2, 48, 10, 11)),
    (FDConv, dict(in_channels=40, out_channels=24, kernel_size=1, stride=2, bias=True), (2, 40, 7, 6)),
    (FDConv, dict(in_channels=32, out_channels=32, kernel_size=3, padding=1, ksm_global_act="tanh", ksm_local_act="tanh", temp=2.0, kernel_temp=0.5, fbm_cfg=dict(act="tanh", spatial_group=2)), (2, 32, 8, 8)),
    (FDConv, dict(in_channels=32, out_channels=32, kernel_size=3, padding=1, param_ratio=2, fbm_cfg=dict(k_list=[2, 4], lowfreq_att=True)), (2, 32, 8, 8)),
    (FDConv, dict(in_channels=32, out_channels=32, kernel_size=3, padding=1, ksm_only_kernel_att=True, ksm_global_act="softmax", use_ksm_local=False), (2, 32, 8, 8)),
    (FDConv, dict(in_channels=32, out_channels=48, kernel_size=1, token_layout=True, bias=True), (2, 5, 7, 32)),
    (FDConv, dict(in_channels=32, out_channels=32, kernel_size=(3, 1), padding=(1, 0), use_fdconv_if_k_in=[(3, 1)]), (2, 32, 8, 8)),
    (FDConv1d, dict(in_channels=32, out_channels=32, kernel_size=3, padding=1), (2, 32, 12)),
    (FDConv3d, dict(in_channels=32, out_channels=32, kernel_size=3, padding=1), (2, 32, 5, 6, 4)),
]  # fmt: skip
SYNC_OPS = {"_local_scalar_dense", "item", "nonzero", "masked_select", "unique", "_unique2", "is_nonzero", "equal"}


class OpCounter(TorchDispatchMode):
    """Non-view aten ops (each a kernel on an accelerator) and ops that wait for tensor values on the host."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.syncs: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            self.syncs[name] += 1
        if not func.is_view and name not in ("detach", "empty", "empty_like", "empty_strided"):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _fused_forms(enabled: bool):
    """Plan every forward with ``fused_elementwise`` (as compiled graphs are planned) when ``enabled``."""
    if not enabled:
        yield
        return
    planned = execution.plan_execution
    fdconv_module.plan_execution = lambda layer, x: dataclasses.replace(planned(layer, x), fused_elementwise=True)
    try:
        yield
    finally:
        fdconv_module.plan_execution = planned


def _layer(cls, kwargs) -> FDConv:
    torch.manual_seed(0)
    return perturb_attention(cls(**kwargs, kernel_num=8), scale=0.3).double()


def _step(layer: FDConv, x: torch.Tensor, train: bool):
    """Output, input and parameter gradients, and the state after one forward (and backward in training)."""
    layer.train(train)
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(train)
    with torch.set_grad_enabled(train):
        y = layer(x)
    grads = {}
    if train:
        y.square().sum().backward()
        grads = {"input": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}
    return y.detach(), grads, copy.deepcopy(layer.state_dict())


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "compiled_forms"])
@pytest.mark.parametrize("cls,kwargs,shape", CASES, ids=lambda c: getattr(c, "__name__", None))
def test_cuda_plan_computes_the_cpu_plans_function(cls, kwargs, shape, fused):
    """``fused`` runs the forms a compiled graph takes (symmetrised spectrum and one 2-D inverse FFT, the local
    attention's taps as sums), here eagerly."""
    layer = _layer(cls, kwargs)
    x = torch.randn(*shape, dtype=torch.float64)
    assert not plan_execution(layer, x).batched
    with planning_as("cuda"):
        assert plan_execution(layer, x).batched
    for train in (False, True):
        start = copy.deepcopy(layer.state_dict())
        expected, expected_grads, expected_state = _step(layer, x, train)
        for _ in range(2):  # the second forward runs from the filled cache
            layer.load_state_dict(start)
            with planning_as("cuda"), _fused_forms(fused):
                y, grads, state = _step(layer, x, train)
            assert relative_error(y, expected) < 1e-12
            for name, grad in expected_grads.items():  # some band attentions get no gradient (zero bands)
                assert (grads[name] - grad).abs().max() <= 1e-10 * grad.abs().max().clamp_min(1e-12), name
            for name, value in expected_state.items():
                torch.testing.assert_close(state[name], value, rtol=1e-12, atol=1e-12, msg=name)


def test_channels_last_model_and_input():
    layer = _layer(FDConv, dict(in_channels=32, out_channels=48, kernel_size=3, padding=1))
    x = torch.randn(2, 32, 9, 8, dtype=torch.float64)
    expected = layer.eval()(x)
    layer = layer.to(memory_format=torch.channels_last)
    assert not layer.dft_weight.is_contiguous()
    with planning_as("cuda"):
        y = layer(x.contiguous(memory_format=torch.channels_last))
    assert relative_error(y, expected) < 1e-12


@pytest.mark.parametrize("change", ["optimizer", "load_state_dict", "init"])
def test_cached_values_follow_parameter_changes(change):
    """Inference caches values derived from parameters (folded attention weights, stacked FBM convolutions):
    after an optimiser step, a state-dict load or an in-place init the layer computes with the new values."""
    layer = _layer(FDConv, dict(in_channels=32, out_channels=32, kernel_size=3, padding=1)).eval()
    x = torch.randn(2, 32, 8, 8, dtype=torch.float64)
    with torch.no_grad(), planning_as("cuda"):
        before = layer(x)
    if change == "optimizer":
        for p in layer.parameters():
            p.grad = torch.randn_like(p)
        torch.optim.SGD(layer.parameters(), lr=0.1).step()
    elif change == "load_state_dict":
        other = _layer(FDConv, dict(in_channels=32, out_channels=32, kernel_size=3, padding=1))
        perturb_attention(other, seed=1)
        with torch.no_grad():
            other.KSM_Global.bn.running_mean.normal_()
        layer.load_state_dict(other.state_dict())
    else:
        torch.nn.init.normal_(layer.KSM_Global.relu.bias)
        torch.nn.init.normal_(layer.FBM.freq_weight_conv_list[1].weight)
    with torch.no_grad():
        expected = layer(x)  # the CPU plan keeps no parameter-derived values
        with planning_as("cuda"):
            after = layer(x)
    assert relative_error(after, before) > 1e-3
    assert relative_error(after, expected) < 1e-12


def _count(layer: FDConv, x: torch.Tensor, train: bool) -> OpCounter:
    counter = OpCounter()
    with planning_as("cuda"):
        layer.train(train)
        with torch.set_grad_enabled(train):
            layer(x)  # warm-up: the caches are filled
            with counter:
                y = layer(x.requires_grad_(train))
                if train:
                    y.backward(torch.ones_like(y))
    return counter


@pytest.mark.parametrize(
    "kwargs,eval_bound,train_bound",
    [
        (dict(in_channels=64, out_channels=64, kernel_size=3, padding=1), 27, 95),  # with FBM
        (dict(in_channels=64, out_channels=128, kernel_size=1), 18, 65),
    ],
    ids=["3x3_fbm", "1x1"],
)
def test_cuda_plan_runs_a_bounded_number_of_ops_and_no_host_syncs(kwargs, eval_bound, train_bound):
    """Each op is a kernel launch on a GPU: the CUDA plan builds a layer's weights in a fixed handful of batched
    ops (the old per-op structure ran ~83 per layer in inference and ~232 per training step), and never waits for
    a tensor's value on the host."""
    layer = perturb_attention(FDConv(**kwargs, kernel_num=64, bias=False))
    x = torch.randn(2, kwargs["in_channels"], 16, 16)
    for train, bound in ((False, eval_bound), (True, train_bound)):
        counter = _count(layer, x.clone(), train)
        assert not counter.syncs, counter.syncs
        assert sum(counter.ops.values()) <= bound, counter.ops
        assert not counter.ops["clone"], counter.ops  # every gradient is made in the layout its tensor has


def test_autocast_keeps_ffts_and_attentions_in_float32():
    layer = perturb_attention(FDConv(32, 32, 3, padding=1, kernel_num=8)).eval()
    x = torch.randn(2, 32, 12, 12)
    with torch.no_grad(), planning_as("cuda"):
        expected = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
    assert y.dtype == torch.bfloat16
    assert relative_error(y.float(), expected) < 2e-2


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("in_channels", [33, 32], ids=["odd", "even"])
def test_inverse_real_fft_gets_real_edge_columns(train, in_channels, monkeypatch):
    """Backends disagree on what an inverse real FFT makes of imaginary parts in the zero (and, for an even length,
    the Nyquist) column; the CPU's ignores them. The CUDA plan hands it those parts zeroed, so every backend
    computes what the CPU does. Checked on every inverse real FFT of the weight image, with a spectrum whose
    edge columns carry imaginary parts (image columns: ``in_channels * 3``, odd or even)."""
    layer = _layer(FDConv, dict(in_channels=in_channels, out_channels=32, kernel_size=3, padding=1)).train(train)
    with torch.no_grad():
        layer.dft_weight.normal_()
    seen, irfft = [], torch.fft.irfft

    def checked_irfft(z, n=None, dim=-1, norm=None):
        edges = [0, z.shape[dim] - 1] if n % 2 == 0 else [0]
        seen.append(z.imag.index_select(dim, torch.tensor(edges)).abs().max().item())
        return irfft(z, n=n, dim=dim, norm=norm)

    monkeypatch.setattr(torch.fft, "irfft", checked_irfft)
    x = torch.randn(2, in_channels, 8, 8, dtype=torch.float64)
    with torch.set_grad_enabled(train), planning_as("cuda"):
        layer(x)
    assert seen == [0.0]
