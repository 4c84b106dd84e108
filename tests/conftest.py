"""Synthetic datasets drawn with Pillow in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageDraw

SHARED = Path(__file__).resolve().parents[2] / "shared"


def draw_pair(
    rng: np.random.Generator, size: tuple[int, int], values: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with bright shapes, and its mask: one shape kind per class (ellipse, rectangle, ...)."""
    width, height = size
    mask = Image.new("L", size, values[0])
    draw = ImageDraw.Draw(mask)
    for _ in range(3):
        cls = int(rng.integers(1, len(values)))
        x0, y0 = int(rng.integers(0, width - 12)), int(rng.integers(0, height - 12))
        x1, y1 = x0 + int(rng.integers(8, 20)), y0 + int(rng.integers(8, 20))
        shape = draw.ellipse if cls % 2 else draw.rectangle
        shape([x0, y0, x1, y1], fill=values[cls])
    mask_array = np.asarray(mask)
    index = np.searchsorted(np.array(values), mask_array)
    image = 40 + 60 * index + rng.normal(0, 8, index.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask_array


def make_dataset(
    root: Path,
    count: int = 8,
    size: tuple[int, int] = (64, 48),
    values: tuple[int, ...] = (0, 255),
    mode: str = "L",
    mask_suffix: str = "",
    image_ext: str = ".png",
    mask_ext: str = ".png",
    image_dir: str = "imgs",
    mask_dir: str = "masks",
    seed: int = 0,
) -> Path:
    """Write ``count`` pairs under ``root/imgs`` and ``root/masks``; returns ``root``."""
    rng = np.random.default_rng(seed)
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, mask = draw_pair(rng, size, values)
        picture = Image.fromarray(image, "L")
        if mode != "L":
            picture = picture.convert(mode)
        picture.save(root / image_dir / f"img{i:03d}{image_ext}")
        Image.fromarray(mask, "L").save(root / mask_dir / f"img{i:03d}{mask_suffix}{mask_ext}")
    return root


def save_array(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Write an array as the file type its suffix names (.npy, .tif via tifffile, else Pillow)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, array)
    elif suffix in (".tif", ".tiff"):
        # (C, H, W) with a few C: one page per channel, as microscopes write multi-channel stacks
        tifffile.imwrite(path, array, photometric="minisblack" if array.ndim == 3 and array.shape[0] <= 4 else None)
    else:
        Image.fromarray(array, mode).save(path)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


def slow_after(values, quick: int = 1) -> list:
    """Parameters of a test where the first ``quick`` stay in the quick run and the rest are marked slow: each
    trains or starts a process (about 1-3 s on 2 CPU cores), and the full suite runs them all. A tuple is one
    case of several arguments."""
    slow = pytest.mark.slow
    return [
        v if i < quick else pytest.param(*v, marks=slow) if isinstance(v, tuple) else pytest.param(v, marks=slow)
        for i, v in enumerate(values)
    ]


# Markers, so that `pytest -m "not slow"` gives a quick run (under 2 minutes on 2 CPU cores): whole files by what
# they exercise, and the single tests that take over about 1.5 s there or export ONNX models
# (`pytest --durations=60` lists them). Parametrized tests keep a few cases in the quick run (slow_after).
FILE_MARKERS = {
    "test_distributed.py": ("distributed", "slow"),
    "test_predict_gpu.py": ("gpu",),
    "test_benchmarks.py": ("slow",),
    "test_bench_data.py": ("slow",),
    "test_bench_predict.py": ("slow",),
}
SLOW_TESTS = {
    "test_logging.py::test_logging_benchmark_smoke",
    "test_logging.py::test_only_rank_0_logs_under_two_processes",
    "test_logging.py::test_unreachable_wandb_service_does_not_stop_training",
    "test_resume.py::test_repeatable_with_a_seed",
    "test_resume.py::test_sigkill_then_resume_equals_an_uninterrupted_run",
    "test_resume.py::test_sigint_saves_a_resumable_checkpoint_and_exits_130",
    "test_recipe.py::test_ensemble_exports_to_onnx_with_the_same_masks",
    "test_export.py::test_onnx_logits_match_pytorch_on_sizes_not_seen_at_export",
    "test_export.py::test_an_export_that_fails_on_other_sizes_is_refused",
    "test_export.py::test_onnx_with_argmax_outputs_the_class_indices",
    "test_export.py::test_metadata_and_sidecar_describe_the_model",
    "test_export.py::test_onnx_predict_writes_the_same_masks_as_the_checkpoint",
    "test_export.py::test_onnx_predict_path_does_not_import_torch",
    "test_checkpoint.py::test_an_onnx_file_with_tampered_metadata_exits_2_with_one_message",
    "test_pilot.py::test_no_pilot_trains_the_plan_directly",
    "test_finetune_plan.py::test_train_with_a_weights_file_plans_the_model_and_the_encoder_rate",
    "test_models.py::test_torchscript_export_matches_pytorch",
    "test_logging.py::test_img_s_counts_training_time_not_the_validation_round",
    "test_recipe.py::test_cross_validation_writes_scores_and_an_ensemble_that_predicts",
    "test_encoder_weights.py::test_train_with_imagenet_weights_uses_imagenet_normalisation",
    "test_train_faults.py::test_resume_from_weights_only_best_pt_says_what_works",
    "test_train_faults.py::test_overwrite_starts_a_fresh_run",
    "test_train_faults.py::test_a_run_directory_in_use_is_refused",
    "test_pilot.py::test_options_the_user_gave_are_not_piloted",
    "test_recipe.py::test_one_fold_at_a_time_then_the_last_one_completes_the_ensemble",
    "test_recipe.py::test_ensemble_checkpoint_round_trip",
    "test_export.py::test_cuda_without_a_cuda_onnxruntime_is_a_clear_error",
    "test_train_faults.py::test_unreadable_last_pt_suggests_a_command_that_works",
    "test_train_faults.py::test_stale_temporaries_are_removed_on_resume_and_only_ours",
    "test_plan_scale.py::test_large_objects_train_downscaled_thin_lines_at_full_resolution",
    "test_data_faults.py::test_a_file_where_the_cache_folder_belongs_is_replaced",
    "test_encoder_weights.py::test_weights_that_do_not_fit_name_what_is_missing_extra_or_misshapen",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        file = item.path.name
        for name in FILE_MARKERS.get(file, ()):
            item.add_marker(name)
        if f"{file}::{item.originalname}" in SLOW_TESTS:
            item.add_marker("slow")
        if "tests/test_logging.py::test_only_rank_0" in item.nodeid:
            item.add_marker("distributed")
