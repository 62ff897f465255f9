"""ONNX export: the matrix-product inverse weight transform against torch's FFT, and a whole FDConv ResNet
exported with a dynamic batch axis and run by onnxruntime against PyTorch."""

from __future__ import annotations

import logging

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnxruntime as ort  # noqa: E402
import timm  # noqa: E402
from fdconv_testing import perturb_attention, relative_error  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import fdconv_zoo  # noqa: E402,F401  (registers the FDConv models)
from fdconv_zoo.cli import main  # noqa: E402
from fdconv_zoo.export import load_state_dict_file, load_timm_model  # noqa: E402
from fdconv_zoo.layers.inverse_fft import _dft_split, inverse_weight_spectrum, irfft2_matmul  # noqa: E402

TINY_ARGS = [
    "--model-arg",
    "layers=[1,1,1,1]",
    "--model-arg",
    "channels=[32,64,96,128]",
    "--model-arg",
    "num_classes=10",
]


# (rows, cols): dense sizes, two-stage (Cooley-Tukey) sizes on either axis, odd and even, a prime above the dense limit.
@pytest.mark.parametrize(
    "rows, cols",
    [(1, 1), (3, 4), (5, 7), (64, 64), (65, 66), (66, 65), (192, 192), (130, 97), (97, 130), (768, 256), (40, 2048)],
)
def test_irfft2_matmul_matches_torch_fft(rows: int, cols: int) -> None:
    """Non-Hermitian input on purpose: the matrix form must read the zero/Nyquist columns as torch's CPU irfft2 does."""
    gen = torch.Generator().manual_seed(rows * 1000 + cols)
    spectrum = torch.randn(2, 3, rows, cols // 2 + 1, 2, generator=gen, dtype=torch.float64)
    expected = torch.fft.irfft2(torch.view_as_complex(spectrum), s=(rows, cols))
    assert relative_error(irfft2_matmul(spectrum[..., 0], spectrum[..., 1], cols), expected) < 1e-13
    assert relative_error(irfft2_matmul(spectrum[..., 0].float(), spectrum[..., 1].float(), cols), expected) < 2e-6


def test_irfft2_matmul_splits_large_axes() -> None:
    # The factorisation is what keeps the exported transform near O(N sqrt N): check it is taken.
    assert _dft_split(64) is None and _dft_split(127) is None
    assert _dft_split(1536) == (48, 32) and _dft_split(192) == (16, 12)


def test_inverse_weight_spectrum_exports_without_fft() -> None:
    class Inverse(torch.nn.Module):
        def forward(self, spectrum: torch.Tensor) -> torch.Tensor:
            return inverse_weight_spectrum(spectrum * 1.0, 66)

    spectrum = torch.randn(2, 130, 34, 2, dtype=torch.float64)
    program = torch.export.export(Inverse(), (spectrum,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    targets = {str(node.target) for node in program.graph.nodes}
    assert not any("fft" in t for t in targets), targets
    other = torch.randn(3, 130, 34, 2, dtype=torch.float64)  # another batch size through the exported graph
    assert relative_error(program.module()(other), inverse_weight_spectrum(other.clone(), 66)) < 1e-13


@pytest.mark.parametrize(
    "shape",
    [
        dict(in_channels=40, out_channels=72, kernel_size=3, padding=1),
        dict(in_channels=130, out_channels=66, kernel_size=1),
    ],
)
def test_fdconv_export_branches_match_eager(monkeypatch, shape) -> None:
    """Every export-only formulation of a whole layer at once (float64, active attentions), without the exporter."""
    from fdconv_zoo import FDConv
    from fdconv_zoo.layers import plan_execution

    layer = perturb_attention(FDConv(**shape, kernel_num=8)).double().eval()
    x = torch.randn(3, shape["in_channels"], 10, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = layer(x)
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
        plan = plan_execution(layer, x)  # what the exporters get: batched matmuls, whole batch, matrix inverse FFT
        monkeypatch.undo()
        assert plan.exporting and plan.method.value == ("pointwise" if shape["kernel_size"] == 1 else "im2col")
        assert plan.samples_per_chunk is None
        assert relative_error(layer(x, plan), expected) < 1e-12


def test_export_onnx_cli_tiny_resnet(tmp_path, caplog) -> None:
    """CLI export of a tiny FDConv ResNet-18 with active attentions; the file is then checked independently."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18_fdconv", layers=(1, 1, 1, 1), channels=(32, 64, 96, 128), num_classes=10)
    perturb_attention(model).eval()
    checkpoint = tmp_path / "tiny.safetensors"
    save_file(model.state_dict(), str(checkpoint))
    out = tmp_path / "tiny.onnx"
    argv = [
        "export-onnx",
        "resnet18_fdconv",
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--image-size",
        "64",
        *TINY_ARGS,
    ]
    with caplog.at_level(logging.INFO, logger="fdconv_zoo"):
        assert main(argv) == 0
    assert "max relative error" in caplog.text

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert not isinstance(inp.shape[0], int) and inp.shape[1:] == [3, 64, 64]  # only the batch axis is symbolic
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64, generator=gen)
        with torch.no_grad():
            expected = model(x)
        (actual,) = session.run(None, {inp.name: x.numpy()})
        assert actual.shape == (batch, 10)
        assert relative_error(torch.from_numpy(actual), expected) <= 1e-4

    # The file is never replaced without --overwrite.
    before = out.stat().st_mtime_ns
    assert main(argv) == 2
    assert out.stat().st_mtime_ns == before


class _Opaque:
    """A pickled object that is not a tensor: a weights-only load must refuse it."""


def test_load_state_dict_file_formats(tmp_path) -> None:
    weights = {"a.weight": torch.randn(2, 3), "b": torch.arange(4)}
    safetensors_file = tmp_path / "w.safetensors"
    save_file(weights, str(safetensors_file))
    legacy = tmp_path / "ckpt.pth"  # a DDP training checkpoint: wrapped and prefixed
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}, "epoch": 3}, legacy)
    for path in (safetensors_file, legacy):
        loaded = load_state_dict_file(path)
        assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)
    other = tmp_path / "w.npz"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="safetensors"):
        load_state_dict_file(other)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": weights, "callback": _Opaque()}, unsafe)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_state_dict_file(unsafe)


def test_load_timm_model_sources(tmp_path) -> None:
    """The CLI's model sources: a saved local-dir model loads as saved; a plain checkpoint converts exactly."""
    tiny = dict(layers=(1, 1, 1, 1), channels=(32, 64, 96, 128), num_classes=10)
    saved = perturb_attention(timm.create_model("resnet18_fdconv", **tiny)).eval()
    fdconv_zoo.save_fdconv_for_hf(saved, tmp_path / "saved")
    loaded = load_timm_model(f"local-dir:{tmp_path / 'saved'}").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), saved(x))

    plain = timm.create_model("resnet18", **tiny).eval()  # a plain ResNet checkpoint: converted to FDConv
    save_file(plain.state_dict(), str(tmp_path / "plain.safetensors"))
    converted = load_timm_model("resnet18_fdconv", tmp_path / "plain.safetensors", **tiny).eval()
    with torch.no_grad():
        assert relative_error(converted(x), plain(x)) < 1e-5

    with pytest.raises(ValueError, match="unknown timm model"):
        load_timm_model("resnet18_fdconvv")
    with pytest.raises(ValueError, match="pretrained tags of resnet18_fdconv"):
        load_timm_model("resnet18_fdconv.no_such_tag")
    with pytest.raises(ValueError, match="num_classes"):  # a 10-class checkpoint into the default 1000-class head
        load_timm_model(
            "resnet18_fdconv", tmp_path / "plain.safetensors", layers=(1, 1, 1, 1), channels=(32, 64, 96, 128)
        )


@pytest.mark.slow
def test_export_onnx_resnet50_fdconv(tmp_path) -> None:
    """The issue's target model at full size (random init, active attentions): minutes on 2 CPU cores."""
    from fdconv_zoo.export import export_onnx, verify_onnx

    model = perturb_attention(timm.create_model("resnet50_fdconv")).eval()
    path = export_onnx(model, tmp_path / "resnet50_fdconv.onnx", input_size=(3, 224, 224))
    assert verify_onnx(path, model, batch_sizes=(1, 2)) <= 1e-4
