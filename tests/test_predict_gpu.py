"""Prediction on a CUDA GPU agrees with the CPU: pipeline, bf16, tiles stitched on device or host, TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from test_predict import blobs
from test_predict_cli import save_checkpoint
from unetseg.cli import main
from unetseg.predict.segmenter import load
from unetseg.predict.tiling import sliding_window

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i, size in enumerate([(96, 80), (64, 48), (96, 80), (96, 80), (64, 48)]):
        Image.fromarray(blobs(*size, seed=i)).save(tmp_path / "imgs" / f"im{i}.png")
    return tmp_path / "imgs"


@pytest.mark.parametrize("extra", [[], ["--amp"], ["--tile", "32", "--tta", "full"]])
def test_cuda_pipeline_agrees_with_the_cpu(folder, tmp_path, extra):
    ckpt = save_checkpoint(tmp_path / "m.pt", values=(0, 100, 200))
    for device in ("cpu", "cuda"):
        args = ["-i", str(folder), "-o", str(tmp_path / device), "-b", "2", "--probs", "--device", device]
        assert main(["predict", "-m", ckpt, *args, *extra, "--quiet"]) == 0
    for path in sorted(folder.iterdir()):
        masks = [np.asarray(Image.open(tmp_path / d / f"{path.stem}.png")) for d in ("cpu", "cuda")]
        probs = [np.load(tmp_path / d / f"{path.stem}_probs.npy").astype(np.float32) for d in ("cpu", "cuda")]
        tolerance = 0.05 if "--amp" in extra else 5e-3  # TF32 convolutions; bf16 keeps 8 bits of mantissa
        assert np.abs(probs[0] - probs[1]).max() < tolerance
        assert (masks[0] == masks[1]).mean() > 0.99


def test_tiles_stitched_on_the_host_equal_tiles_stitched_on_the_gpu(tmp_path):
    model = load(save_checkpoint(tmp_path / "m.pt"), device="cuda")
    x = torch.randn(2, 1, 90, 70, device="cuda")
    with torch.inference_mode():
        on_gpu = sliding_window(model._logits, x, 32, 0.5, batch_size=3)
        on_host = sliding_window(model._logits, x, 32, 0.5, batch_size=3, out_device=torch.device("cpu"))
    assert on_gpu.device.type == "cuda" and on_host.device.type == "cpu"
    assert torch.allclose(on_gpu.cpu(), on_host, atol=1e-5)
