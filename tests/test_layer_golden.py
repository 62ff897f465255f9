"""The layer against test vectors computed by the official FDConv implementation (tests/data/golden), under both
the eager CPU plan and the CUDA plan (batched ops; forced here with ``planning_as``)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fdconv_zoo import FDConv
from fdconv_zoo.layers import band_masks, frequency_group_map, planning_as

GOLDEN = sorted((Path(__file__).parent / "data" / "golden").glob("*.safetensors"))


def cases_with(key: str) -> list[Path]:
    """Golden files that carry the optional intermediate ``key`` (they are omitted when large)."""
    found = []
    for path in GOLDEN:
        with safe_open(str(path), framework="pt") as f:
            if key in f.keys():
                found.append(path)
    return found


def load_case(path: Path) -> tuple[dict, dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return json.loads(meta["config"]), meta, tensors


def build_layer(config: dict, tensors: dict[str, torch.Tensor]) -> FDConv:
    layer = FDConv(**config)
    layer.load_state_dict(
        {k.removeprefix("state."): v for k, v in tensors.items() if k.startswith("state.")}, strict=True
    )
    return layer


@pytest.fixture(params=["cpu", "cuda"], ids=["cpu_plan", "cuda_plan"])
def planned(request):
    """Every forward in the test planned as on this device type (the tensors stay on the CPU)."""
    with planning_as(request.param):
        yield request.param


def test_golden_files_present():
    assert len(GOLDEN) == 13
    assert len(cases_with("aux.group_id")) == 12 and len(cases_with("aux.fbm_masks")) == 8


@pytest.mark.parametrize("autograd", [False, True], ids=["no_grad", "autograd"])
@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_output_matches_official(path, planned, autograd):
    config, meta, t = load_case(path)
    layer = build_layer(config, t)
    layer.train(meta["mode"] == "train")
    assert layer.use_fdconv == (meta["branch"] != "fallback")
    x = t["input"].clone().requires_grad_(autograd)
    with torch.set_grad_enabled(autograd):
        out = layer(x)
    torch.testing.assert_close(out.detach(), t["output"], rtol=1e-4, atol=1e-4)
    if autograd:  # the recorded graph runs backward
        out.square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
    post = {k.removeprefix("post_state."): v for k, v in t.items() if k.startswith("post_state.")}
    assert bool(post) == (meta["mode"] == "train")
    state = layer.state_dict()
    for key, expected in post.items():
        torch.testing.assert_close(state[key].double(), expected.double(), rtol=0, atol=1e-5, msg=key)


@pytest.mark.parametrize("path", cases_with("aux.group_id"), ids=lambda p: p.stem)
def test_frequency_groups_match_official(path):
    config, _, t = load_case(path)
    k = config["kernel_size"] if isinstance(config["kernel_size"], int) else config["kernel_size"][0]
    groups = frequency_group_map(
        config["out_channels"] * k, config["in_channels"] * k, config["kernel_num"] * config["param_ratio"]
    )
    assert torch.equal(groups.to(torch.uint8), t["aux.group_id"])
    assert torch.equal(build_layer(config, t).frequency_group, groups)


@pytest.mark.parametrize("path", cases_with("aux.fbm_masks"), ids=lambda p: p.stem)
def test_band_masks_match_official(path):
    _, _, t = load_case(path)
    h, w = t["input"].shape[-2:]
    assert torch.equal(band_masks(h, w, [2, 4, 8]).to(torch.uint8), t["aux.fbm_masks"])


@pytest.mark.parametrize("path", cases_with("aux.kernel_attention"), ids=lambda p: p.stem)
def test_attentions_match_official(path):
    """The global-branch attentions, to localise a mismatch before it reaches the output."""
    config, meta, t = load_case(path)
    layer = build_layer(config, t)
    layer.train(meta["mode"] == "train")
    with torch.no_grad():
        channel, filt, spatial, kernel = layer.KSM_Global(t["input"].mean((2, 3)))
    torch.testing.assert_close(channel, t["aux.channel_attention"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(filt, t["aux.filter_attention"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kernel, t["aux.kernel_attention"], rtol=1e-5, atol=1e-6)
    if "aux.spatial_attention" in t:
        torch.testing.assert_close(spatial, t["aux.spatial_attention"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", cases_with("aux.fbm_output"), ids=lambda p: p.stem)
def test_fbm_output_matches_official(path):
    config, _, t = load_case(path)
    layer = build_layer(config, t).eval()
    with torch.no_grad():
        torch.testing.assert_close(layer.FBM(t["input"]), t["aux.fbm_output"], rtol=1e-4, atol=1e-4)


def test_exact_masks_change_the_function_except_at_64():
    """exact_masks=True is a different (documented) function at sizes other than the 64x64 mask grid."""
    config, _, t = load_case(next(p for p in GOLDEN if p.stem == "k3_fbm_32x32_b3"))
    official = build_layer(config, t).eval()
    exact = build_layer({**config, "fbm_cfg": {**config["fbm_cfg"], "exact_masks": True}}, t).eval()
    with torch.no_grad():
        assert (official(t["input"]) - exact(t["input"])).abs().max() > 1e-2
        x64 = torch.randn(1, config["in_channels"], 64, 64)
        torch.testing.assert_close(official(x64), exact(x64))
    assert torch.equal(band_masks(64, 64, [2, 4, 8]), band_masks(64, 64, [2, 4, 8], exact=True))
    # Exact masks are symmetric in +-f (row r and row H-r agree); the resized official ones are not at 56x56.
    exact56, official56 = band_masks(56, 56, [8], exact=True)[0], band_masks(56, 56, [8])[0]
    assert torch.equal(exact56[1:], exact56[1:].flip(0))
    assert not torch.equal(official56[1:], official56[1:].flip(0))


def test_single_rounding_of_the_squared_distance():
    """The grouping's float32(fh^2 + fw^2) is rounded once (FMA semantics), checked with exact fractions."""
    from fractions import Fraction

    import numpy as np

    from fdconv_zoo.layers.frequency_groups import _round_sum_to_float32

    gen = torch.Generator().manual_seed(0)
    fh = torch.rand(4000, generator=gen).float().double() * 0.5
    fw = torch.rand(4000, generator=gen).float().double() * 0.5
    a, b = (fh * fh).float().double(), fw * fw
    # Force double-rounding hazards: b's low bits chosen so that a + b rounds (in float64) onto a float32 midpoint.
    ulp32 = torch.nextafter(a.float(), torch.tensor(1.0)).double() - a.float().double()
    # b = half a float32 ulp of a plus a sliver: the exact sum lies just above a float32 midpoint, but its
    # float64 rounding lands on the midpoint itself, where naive rounding then ties to even.
    sliver = torch.ldexp(torch.ones_like(a), torch.full_like(a, -70, dtype=torch.int32))
    a, b = torch.cat([a, a, a]), torch.cat([b, ulp32 / 2 + sliver, ulp32 / 2 - sliver])
    got = _round_sum_to_float32(a, b)
    assert ((a + b).float() != got).sum() > 1000  # the hazard is real: naive double rounding gets these wrong
    for x, y, r in zip(a.tolist(), b.tolist(), got.tolist()):
        exact = Fraction(x) + Fraction(y)
        lo = np.float32(float(exact))  # candidate; fix by exact comparison below
        below, above = (
            (lo, np.nextafter(lo, np.float32(1)))
            if Fraction(float(lo)) <= exact
            else (np.nextafter(lo, np.float32(0)), lo)
        )
        d_below, d_above = exact - Fraction(float(below)), Fraction(float(above)) - exact
        expected = (
            below
            if d_below < d_above or (d_below == d_above and int(np.float32(below).view(np.int32)) % 2 == 0)
            else above
        )
        assert r == float(expected)
