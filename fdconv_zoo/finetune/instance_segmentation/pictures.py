"""A picture of a Mask2Former's instances on an image, with the FBM attention maps FDConv computed for it.

The instances come from the image processor's ``post_process_instance_segmentation`` (the call users make);
the maps are those of the backbone's first FDConv layer with frequency band modulation, captured by a forward
hook in the same forward pass and computed by :func:`fdconv_zoo.viz.fbm_maps`. Drawn and written as
:mod:`fdconv_zoo.viz` draws (matplotlib without pyplot, PNG written atomically, never replaced unasked).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ...viz.analysis import fbm_maps
from ...viz.plots import first_fbm_layer
from ...viz.png import check_png_target, require_matplotlib, save_png
from .masks import mask_boxes

__all__ = ["plot_instances"]


@torch.no_grad()
def plot_instances(
    model: nn.Module,
    processor: Any,
    image: Any,
    path: str | os.PathLike,
    *,
    threshold: float = 0.5,
    overwrite: bool = False,
    dpi: int = 110,
) -> Path:
    """Draw ``model``'s instances on ``image`` (a PIL image) with scores above ``threshold``: masks tinted,
    boxes around them, class and score; beside it, one panel per FBM band with that band's attention map
    (averaged over the channel groups; 1 = unchanged). Writes ``path`` (.png) and returns it."""
    matplotlib, Figure, _ = require_matplotlib()
    path = check_png_target(path, overwrite)
    name, layer = first_fbm_layer(model)
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, output: captured.append(args[0].detach()))
    was_training = model.training
    try:
        model.eval()
        rgb = image.convert("RGB")
        outputs = model(**processor(images=rgb, return_tensors="pt"))
    finally:
        handle.remove()
        model.train(was_training)
    (result,) = processor.post_process_instance_segmentation(
        outputs, threshold=threshold, target_sizes=[rgb.size[::-1]], return_binary_maps=True
    )
    segments = result["segments_info"]
    masks = result["segmentation"].bool() if segments else torch.zeros((0, rgb.height, rgb.width), dtype=torch.bool)
    maps = fbm_maps(layer, captured[0][:1])[0].float().mean(1)  # (bands, H, W)

    columns = 1 + maps.shape[0]
    fig = Figure(figsize=(4.2 * columns, 4.4), layout="constrained")
    fig.suptitle(f"{len(segments)} instances (score >= {threshold:g}); FBM attention of {name}", fontsize=12)
    axes = fig.subplots(1, columns)
    colours = matplotlib.colormaps["tab10"]
    pixels = np.asarray(rgb, dtype=np.float32) / 255
    for i, mask in enumerate(masks.numpy()):
        pixels[mask] = 0.55 * pixels[mask] + 0.45 * np.asarray(colours(i % 10)[:3], dtype=np.float32)
    axes[0].imshow(pixels)
    for i, (info, box) in enumerate(zip(segments, mask_boxes(masks).tolist(), strict=True)):
        x0, y0, x1, y1 = box
        colour = colours(i % 10)
        axes[0].add_patch(matplotlib.patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour))
        label = model.config.id2label.get(info["label_id"], str(info["label_id"]))
        axes[0].text(x0, y0, f"{label} {info['score']:.2f}", color="white", fontsize=8, backgroundcolor=colour)
    axes[0].set_title("predicted instances", fontsize=10)
    for j, amap in enumerate(maps):
        shown = axes[j + 1].imshow(  # stretched back to the image's shape (the processor resizes to a square)
            amap.numpy(),
            cmap="RdBu_r",
            vmin=min(0.0, float(amap.min())),
            vmax=2.0,
            extent=(0, rgb.width, rgb.height, 0),
        )
        axes[j + 1].set_title(f"FBM attention, band {j} (0: highest)", fontsize=10)
        fig.colorbar(shown, ax=axes[j + 1], fraction=0.046, pad=0.03)
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])
    return save_png(fig, path, overwrite, dpi)
