"""The Python examples in docs/predict.md and docs/api.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from test_predict import blobs
from unetseg.core.checkpoint import inference_checkpoint
from unetseg.data.classmap import ClassMap
from unetseg.models.unet import UNet

DOC = Path(__file__).resolve().parents[1] / "docs" / "predict.md"


def test_predict_md_python_example_runs(tmp_path, monkeypatch):
    torch.manual_seed(0)
    norm = {"scale": 255.0, "mean": [0.5] * 3, "std": [0.25] * 3}
    torch.save(inference_checkpoint(UNet(3, 2, width=4), ClassMap([0, 255]), norm, scale=0.5), tmp_path / "best.pt")
    Image.fromarray(np.repeat(blobs(72, 48)[:, :, None], 3, axis=2)).save(tmp_path / "car.jpg")
    monkeypatch.chdir(tmp_path)
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(code) == 1
    namespace: dict = {}
    exec(compile(code[0], str(DOC), "exec"), namespace)
    assert namespace["mask"].shape == (48, 72) and namespace["probs"].shape == (2, 48, 72)
    assert len(namespace["masks"]) == 2 and np.array_equal(namespace["masks"][0], namespace["mask"])
    assert namespace["colors"].shape == (48, 72, 3) and (tmp_path / "car_colors.png").is_file()


API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_api_md_example_runs(tmp_path, monkeypatch):
    from conftest import make_dataset

    make_dataset(tmp_path / "data", count=4, size=(32, 32))
    monkeypatch.chdir(tmp_path)
    code = re.findall(r"```python\n(.*?)```", API_DOC.read_text(), flags=re.S)
    assert len(code) == 1
    namespace: dict = {}
    exec(compile(code[0], str(API_DOC), "exec"), namespace)
    assert namespace["result"].exit_code == 0 and namespace["more"].steps == 2 * namespace["result"].steps
    assert namespace["report"]["images"] == 4 and namespace["mask"].shape == (32, 32)
