"""Cross-validation: k models on deterministic folds, out-of-fold scores, and an ensemble checkpoint."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import torch

from unetseg.config import TrainConfig
from unetseg.core.atomic import write_atomic
from unetseg.core.checkpoint import build_model, load_checkpoint, make_checkpoint, save_atomic
from unetseg.core.device import choose_dtype, resolve_device
from unetseg.data.classmap import ClassMap
from unetseg.data.prepare import prepare_for
from unetseg.errors import UserError
from unetseg.evaluation.choice import ScoreChoice, checkpoint_choice
from unetseg.evaluation.metrics import class_scores, means
from unetseg.evaluation.report import json_safe
from unetseg.evaluation.scoring import evaluate
from unetseg.training.loop import fit
from unetseg.training.rundir import default_run_dir


def fold_dir(root: Path, fold: int) -> Path:
    return root / f"fold_{fold}"


def out_of_fold(cfg: TrainConfig, root: Path, fold: int) -> dict:
    """Confusion matrix of fold ``fold``'s best model on the images it never trained on."""
    data = prepare_for(cfg, fold=(fold, cfg.folds))  # --val-data is refused with --folds
    ckpt = load_checkpoint(fold_dir(root, fold) / "checkpoints" / "best.pt")
    device = resolve_device(cfg.device)
    model = build_model(ckpt).to(device)
    result = evaluate(
        model,
        data.val,
        ckpt["norm"],
        data.class_map.num_classes,
        device,
        choose_dtype(cfg.precision, cfg.amp, device),
        cfg.val_batch_size,
    )
    return {"fold": fold, "images": result["images"], "confusion": result["confusion"]}


def write_ensemble(root: Path, folds: int) -> Path:
    """One checkpoint holding every fold's best model; predict, evaluate and export take it like any other."""
    members = [load_checkpoint(fold_dir(root, i) / "checkpoints" / "best.pt") for i in range(folds)]
    first = members[0]
    state = {f"members.{i}.{k}": v for i, m in enumerate(members) for k, v in m["state_dict"].items()}
    spec = {
        "name": "ensemble",
        "members": [m["model"] for m in members],
        "norms": [m["norm"] for m in members],
        "norm": first["norm"],
    }
    ckpt = make_checkpoint(
        spec,
        state,
        first["channels"],
        first["norm"],
        first["class_map"],
        first["scale"],
        first["config"],
        source="unetseg-ensemble",
        score=checkpoint_choice(first, ClassMap.from_dict(first["class_map"])).record(math.nan, -1),
    )
    path = root / "ensemble.pt"
    save_atomic(ckpt, path)
    return path


def summarise(root: Path, folds: int, names: list[str], choice: ScoreChoice) -> dict:
    """Pooled out-of-fold scores over all folds (both means; ``choice`` is the headline), in ``cv.json`` and printed."""
    cms = [torch.tensor(json.loads((fold_dir(root, i) / "oof.json").read_text())["confusion"]) for i in range(folds)]
    cm = torch.stack(cms).sum(0)
    scores = class_scores(cm)
    per_fold = [means(class_scores(c)) for c in cms]
    report = {
        "folds": folds,
        "headline": {"value": choice.value(means(class_scores(cm))), **choice.describe()},
        **means(class_scores(cm)),
        "dice_fg_per_fold": [f["dice_fg"] for f in per_fold],
        "miou_per_fold": [f["miou"] for f in per_fold],
        "classes": [{"name": n, "dice": d, "iou": i} for n, d, i in zip(names, scores["dice"], scores["iou"])],
        "confusion": cm.tolist(),
    }
    write_atomic(root / "cv.json", json.dumps(json_safe(report), indent=2).encode())
    print(
        f"cross-validation ({folds} folds, out-of-fold pixels pooled): {choice.label} "
        f"{report['headline']['value']:.4f} ({choice.reason}); "
        + (f"foreground Dice {report['dice_fg']:.4f}" if choice.kind == "all" else f"mIoU {report['miou']:.4f}")
    )
    for row in report["classes"]:
        print(f"  {row['name']:<16} dice {row['dice']:.4f}  iou {row['iou']:.4f}")
    print(f"  {choice.name} per fold: " + ", ".join(f"{f[choice.name]:.4f}" for f in per_fold))
    return report


def cross_validate(cfg: TrainConfig) -> int:
    """``unetseg train --folds K [--fold i]``: train the folds, then score out of fold and write the ensemble."""
    if cfg.val_data:
        raise UserError("--folds and --val-data exclude each other: folds take their validation from --data")
    if cfg.fold is not None and not 0 <= cfg.fold < cfg.folds:
        raise UserError(f"--fold {cfg.fold}: folds are numbered 0 to {cfg.folds - 1}")
    root = Path(cfg.out or default_run_dir())
    todo = [cfg.fold] if cfg.fold is not None else list(range(cfg.folds))
    for fold in todo:
        result = fit(replace(cfg, out=str(fold_dir(root, fold)), fold=fold))
        if result["exit_code"]:
            return result["exit_code"]
        oof = out_of_fold(cfg, root, fold)
        write_atomic(fold_dir(root, fold) / "oof.json", json.dumps(oof).encode())
    done = [i for i in range(cfg.folds) if (fold_dir(root, i) / "oof.json").exists()]
    if len(done) < cfg.folds:
        print(f"folds {done} of {cfg.folds} are done in {root}; the ensemble is written when all are")
        return 0
    first = load_checkpoint(fold_dir(root, 0) / "checkpoints" / "best.pt")
    class_map = ClassMap.from_dict(first["class_map"])
    summarise(root, cfg.folds, class_map.names, checkpoint_choice(first, class_map, cfg.score))
    print(f"ensemble of {cfg.folds} models: {write_ensemble(root, cfg.folds)}")
    return 0
