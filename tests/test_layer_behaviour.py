"""Layer behaviour beyond the golden vectors: token layout, gradients, serialisation, modes, dtypes, bad input."""

import copy
import dataclasses

import pytest
import torch
import torch.nn as nn
from fdconv_testing import perturb_attention, relative_error
from safetensors.torch import load_file, save_file

from fdconv_zoo import FDConv
from fdconv_zoo.layers import plan_execution


def dynamic_layer(*args, seed=0, **kwargs) -> FDConv:
    torch.manual_seed(seed)
    return perturb_attention(FDConv(*args, **kwargs), seed=seed)


@pytest.mark.parametrize("cin,cout,hw", [(96, 64, (6, 5)), (40, 160, (4, 4)), (128, 128, (2, 3))])
def test_token_layout_equals_nchw_1x1(cin, cout, hw):
    """(B, H, W, C) and (B, N, C) token inputs give the 1x1 FDConv of the same data in NCHW layout."""
    conv = dynamic_layer(cin, cout, 1, kernel_num=16)
    tokens = FDConv(cin, cout, 1, kernel_num=16, token_layout=True)
    tokens.load_state_dict(conv.state_dict(), strict=True)
    x = torch.randn(3, cin, *hw)
    for train in (False, True):
        conv.train(train), tokens.train(train)
        with torch.no_grad():
            expected = conv(x).permute(0, 2, 3, 1)
            torch.testing.assert_close(tokens(x.permute(0, 2, 3, 1)), expected, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(
                tokens(x.flatten(2).transpose(1, 2)), expected.flatten(1, 2), rtol=1e-5, atol=1e-5
            )
    assert relative_error(expected, x.permute(0, 2, 3, 1) @ torch.randn(cin, cout)) > 0.5  # the attentions matter


@pytest.mark.parametrize("token_layout", [False, True])
def test_feature_and_weight_branches_agree(token_layout):
    """The official layer picks a branch by input size; both compute the same function."""
    k = 1 if token_layout else 3
    layer = dynamic_layer(64, 48, k, padding=k // 2, kernel_num=8, token_layout=token_layout).eval()
    x = torch.randn(2, 7, 9, 64) if token_layout else torch.randn(2, 64, 7, 9)
    outputs = []
    for fold in (True, False):
        with torch.no_grad():
            plan = dataclasses.replace(plan_execution(layer, x), fold_attention=fold)
            outputs.append(layer(x, plan))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


def test_samples_are_independent_in_eval():
    layer = dynamic_layer(64, 48, 3, padding=1, kernel_num=8).eval()
    x = torch.randn(3, 64, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), torch.cat([layer(x[i : i + 1]) for i in range(3)]), rtol=1e-5, atol=1e-5)


def test_every_trainable_parameter_gets_a_gradient():
    layer = dynamic_layer(32, 48, 3, stride=2, padding=1, bias=True, kernel_num=8).train()
    x = torch.randn(3, 32, 12, 12, requires_grad=True)
    layer(x).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_neutral_init_trains_the_heads_first():
    """At the exact neutral init the heads are zero: they get gradients, the layer output is the static conv."""
    layer = FDConv(32, 32, 3, padding=1, kernel_num=8).train()
    layer(torch.randn(2, 32, 8, 8)).square().mean().backward()
    for head in layer.KSM_Global.heads():
        assert head.weight.grad.abs().sum() > 0
    assert layer.KSM_Local.conv.weight.grad.abs().sum() > 0


def test_float64_gradcheck():
    torch.manual_seed(0)
    layer = dynamic_layer(18, 20, 3, padding=1, bias=True, kernel_num=4).double().eval()
    names = [
        "dft_weight",
        "KSM_Global.kernel_fc.weight",
        "KSM_Global.fc.weight",
        "KSM_Local.conv.weight",
        "FBM.freq_weight_conv_list.0.weight",
    ]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in layer.named_parameters() if n in names}
    x = torch.randn(2, 18, 5, 6, dtype=torch.float64, requires_grad=True)

    def fn(x, *values):
        return torch.func.functional_call(layer, dict(zip(params, values)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params.values()), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_float64_agrees_with_float32():
    layer = dynamic_layer(48, 64, 3, padding=1, kernel_num=16).eval()
    x = torch.randn(2, 48, 14, 10)
    with torch.no_grad():
        assert relative_error(layer(x), copy.deepcopy(layer).double()(x.double())) <= 1e-5


def test_state_dict_round_trip_through_safetensors(tmp_path):
    layer = dynamic_layer(64, 64, 3, padding=1, kernel_num=64).eval()
    save_file(layer.state_dict(), tmp_path / "layer.safetensors")
    clone = FDConv(64, 64, 3, padding=1, kernel_num=64).eval()
    clone.load_state_dict(load_file(tmp_path / "layer.safetensors"), strict=True)
    x = torch.randn(2, 64, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), layer(x), rtol=0, atol=0)


def test_state_dict_layout_is_official():
    layer = FDConv(64, 64, 3, padding=1, bias=True, kernel_num=64)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes["dft_weight"] == (1, 192, 97, 2)
    assert shapes["KSM_Global.fc.weight"] == (16, 64, 1, 1)
    assert shapes["KSM_Global.kernel_fc.weight"] == (64, 16, 1, 1)
    assert shapes["KSM_Global.spatial_fc.weight"] == (9, 16, 1, 1)
    assert shapes["KSM_Local.conv.weight"] == (576, 1, 5)
    assert shapes["FBM.freq_weight_conv_list.2.weight"] == (1, 64, 3, 3)
    assert "frequency_group" not in shapes  # non-persistent, recomputed
    assert sum(1 for k in shapes if k.startswith("FBM.")) == 6 and "bias" in shapes


def test_batch_one_training_uses_running_statistics():
    layer = dynamic_layer(32, 32, 1, kernel_num=8).train()
    bn = layer.KSM_Global.bn
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        train_out = layer(x)
        eval_out = layer.eval()(x)
    torch.testing.assert_close(train_out, eval_out, rtol=0, atol=0)
    assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())
    layer.train()(torch.randn(2, 32, 6, 6))
    assert bn.num_batches_tracked.item() == before["num_batches_tracked"].item() + 1


@pytest.mark.parametrize("channels", [64, 128])  # 128: weights built a sample at a time, in reused buffers
def test_autocast_bfloat16_keeps_ffts_in_float32(channels):
    layer = dynamic_layer(channels, channels, 3, padding=1, kernel_num=16).eval()
    x = torch.randn(2, channels, 12, 12)
    with torch.no_grad():
        ref = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
    assert out.dtype == torch.bfloat16
    assert relative_error(out.float(), ref) < 3e-2
    tokens = dynamic_layer(64, 96, 1, kernel_num=16, token_layout=True, bias=True).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert tokens(torch.randn(2, 5, 64)).dtype == torch.bfloat16


def test_meta_device_construction_then_materialise():
    layer = FDConv(64, 32, 3, padding=1, kernel_num=64, device="meta")
    assert layer.dft_weight.is_meta
    layer = layer.to_empty(device="cpu")
    layer.reset_parameters()
    layer.init_non_persistent_buffers()
    reference = FDConv(64, 32, 3, padding=1, kernel_num=64)
    assert torch.equal(layer.frequency_group, reference.frequency_group)
    conv = nn.Conv2d(64, 32, 3, padding=1)
    layer.load_conv_weight(conv.weight, conv.bias)
    x = torch.randn(1, 64, 7, 7)
    with torch.no_grad():
        assert relative_error(layer(x), conv(x)) <= 1e-5


# ------------------------------------------------------------------------------------------ bad input
def test_wrong_input_channels():
    layer = FDConv(32, 32, 3, padding=1, kernel_num=8)
    with pytest.raises(ValueError, match=r"\(B, 32, H, W\).*\(2, 16, 8, 8\)"):
        layer(torch.randn(2, 16, 8, 8))


def test_non_4d_input():
    layer = FDConv(32, 32, 3, padding=1, kernel_num=8)
    with pytest.raises(ValueError, match="token_layout=True"):
        layer(torch.randn(2, 8, 32))
    tokens = FDConv(32, 40, 1, kernel_num=8, token_layout=True)
    with pytest.raises(ValueError, match=r"\(B, \.\.\., 32\)"):
        tokens(torch.randn(2, 8, 31))


def test_integer_input():
    with pytest.raises(TypeError, match="floating-point"):
        FDConv(32, 32, 1, kernel_num=8)(torch.ones(1, 32, 4, 4, dtype=torch.int64))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_size=(3, 1)), "kernel_size"),  # official: treated as FDConv, then crashes
        (dict(kernel_size=3, groups=2), "groups=1"),
        (dict(kernel_size=3, ksm_global_act="softmax"), "softmax"),
        (dict(kernel_size=3, param_reduction=0.5), "param_reduction"),
        (dict(kernel_size=3, spatial_freq_decompose=True), "spatial_freq_decompose"),
        (dict(kernel_size=3, fbm_cfg=dict(k_lst=[2])), "unknown fbm_cfg keys"),
        (dict(kernel_size=3, kernel_num=0), "kernel_num"),
        (dict(kernel_size=1, token_layout=True, stride=2), "token_layout"),
    ],
)
def test_unsupported_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FDConv(32, 32, **kwargs)


def test_state_dict_with_missing_or_misshaped_keys():
    layer = FDConv(32, 32, 3, padding=1, kernel_num=8)
    state = layer.state_dict()
    missing = {k: v for k, v in state.items() if k != "KSM_Global.kernel_fc.weight"}
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*KSM_Global\.kernel_fc\.weight"):
        layer.load_state_dict(missing)
    misshaped = {**state, "dft_weight": torch.zeros(1, 96, 40, 2)}
    with pytest.raises(RuntimeError, match=r"size mismatch for dft_weight.*\[1, 96, 40, 2\].*\[1, 96, 49, 2\]"):
        layer.load_state_dict(misshaped)


def test_plain_conv_checkpoint_names_the_conversion():
    layer = FDConv(32, 32, 3, padding=1, kernel_num=8)
    with pytest.raises(RuntimeError, match=r"plain convolution weight.*convert_state_dict"):
        layer.load_state_dict(nn.Conv2d(32, 32, 3, padding=1).state_dict(), strict=False)


def test_from_conv_rejects_other_modules():
    with pytest.raises(TypeError, match="nn.Conv2d or nn.Linear"):
        FDConv.from_conv(nn.Conv1d(32, 32, 3))


def test_torch_compile_matches_eager():
    layer = dynamic_layer(32, 48, 3, padding=1, kernel_num=8).eval()
    x = torch.randn(2, 32, 12, 12)
    compiled = torch.compile(layer, fullgraph=True)  # no graph break in the layer (one would leave it part eager)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


def test_torch_compile_follows_changing_input_sizes():
    """A second input size makes dynamo recompile with symbolic sizes: the band masks, constants of a static
    graph, are then built in the graph."""
    torch._dynamo.reset()
    layer = dynamic_layer(32, 48, 3, padding=1, kernel_num=8).eval()
    compiled = torch.compile(layer, fullgraph=True)
    with torch.no_grad():
        for size in (12, 14, 16):
            x = torch.randn(2, 32, size, size)
            torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)


def test_default_device_context_does_not_leak_into_the_grouping():
    """transformers builds models under torch.device('meta'); the grouping is always computed on the CPU."""
    from fdconv_zoo.layers.frequency_groups import _frequency_group_map_cpu

    _frequency_group_map_cpu.cache_clear()
    with torch.device("meta"):
        meta_layer = FDConv(48, 48, 3, padding=1, kernel_num=8)
        assert meta_layer.frequency_group.is_meta
        from fdconv_zoo.layers import frequency_group_map

        assert frequency_group_map(144, 144, 8).device.type == "cpu"
    layer = FDConv(48, 48, 3, padding=1, kernel_num=8)  # same shape, built normally afterwards
    assert layer.frequency_group.device.type == "cpu" and int(layer.frequency_group.max()) == 7


def test_reset_attention_respects_guarded_initialisers():
    """Under transformers' meta-device loading, tensors already loaded are flagged and must be left alone."""
    from transformers import initialization as hf_init

    layer = FDConv(32, 32, 3, padding=1, kernel_num=8)
    loaded = {"bn.running_mean": 3.0, "bn.running_var": 5.0, "kernel_fc.weight": 0.5, "fc.weight": 0.25}
    for name, value in loaded.items():
        tensor = layer.KSM_Global.get_parameter(name) if "running" not in name else layer.KSM_Global.get_buffer(name)
        tensor.data.fill_(value)
        tensor._is_hf_initialized = True
    layer.KSM_Global.kernel_fc.bias.data.fill_(1.0)  # not loaded: must be reset
    with hf_init.guard_torch_init_functions():
        layer.reset_attention()
    for name, value in loaded.items():
        tensor = layer.KSM_Global.get_parameter(name) if "running" not in name else layer.KSM_Global.get_buffer(name)
        assert torch.all(tensor == value), name
    assert torch.all(layer.KSM_Global.kernel_fc.bias == 0)
