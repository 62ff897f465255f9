"""Detection and instance segmentation under ``torchrun`` (2 CPU processes, gloo): every rank trains on its half
of the data, the ranks end with identical weights, the COCO evaluation gathers every rank's predictions, and only
rank 0 writes the model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from detection_testing import tiny_checkpoint, write_coco_folder
from fdconv_testing import torchrun_on_two_cpu_processes
from instance_testing import write_instance_folder
from safetensors.torch import load_file


@pytest.mark.parametrize("task", ["detection", "instance"])
def test_coco_tasks_under_ddp_keep_the_ranks_identical(tmp_path, task):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt")
    write = write_coco_folder if task == "detection" else write_instance_folder
    data = write(tmp_path / "data", n_train=16, n_val=6)
    out = tmp_path / "run"
    worker = Path(__file__).with_name("ddp_coco_worker.py")
    run = torchrun_on_two_cpu_processes(worker, task, checkpoint, str(data), str(out), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = load_file(out / "rank0.safetensors"), load_file(out / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and any(k.endswith("dft_weight") for k in rank0)
    differing = {k for k in rank0 if not torch.equal(rank0[k], rank1[k])}
    # Every parameter is identical. The backbone's batch norms are frozen; the heads' are not, and DDP
    # broadcasts buffers from rank 0 before each forward, so their running statistics of the last step differ.
    assert all(k.endswith((".running_mean", ".running_var")) and "backbone" not in k for k in differing)
    state = json.loads(next((out / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["global_step"] == 2  # 16 images / (4 per rank x 2 ranks): the data was split, not duplicated
    # Each rank scores the predictions gathered from both (a rank scoring only its own half could differ).
    metrics = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert metrics[0] == metrics[1] and metrics[0]["map" if task == "detection" else "segm_map"] >= 0
    assert (out / "model" / "metrics.json").is_file()
