"""Which score ranks a model: the foreground mean, or the mean over every class (mIoU).

Class 0 is often background, whose near-perfect score would only flatter the mean: then the score is the foreground
Dice (``dice_fg``, the mean over classes 1..K-1), as in Pytorch-UNet. But when class 0 is a real class (a classes
file names it ``sky``, or colour masks have no black class), leaving it out ignores a class the model must learn:
then the score is the mean IoU over every class (``miou``), the semantic-segmentation convention.

:func:`choose_score` decides from the class map; ``--score foreground|all`` (or ``score:`` in classes.yaml)
overrides. The same choice ranks validation rounds (best.pt, early stopping, the plateau schedule), heads the console
line and metrics.csv, is recorded in each checkpoint, and heads ``unetseg evaluate``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from unetseg.data.classmap import ClassMap
from unetseg.errors import UserError

SCORE_KINDS = ("foreground", "all")
SCORE_OPTIONS = ("auto", *SCORE_KINDS)
SCORE_NAMES = {"foreground": "dice_fg", "all": "miou"}  # the result / metrics.csv key each kind is read from
SCORE_LABELS = {"foreground": "foreground Dice", "all": "mIoU"}
# A later validation round whose score is at most NOISE_Z standard errors below the highest one (the error of the
# difference, paired over the same images) is not measurably worse: it becomes best.pt, as the more-trained model.
NOISE_Z = 2.0
# Names that mean "not a class of interest" (compared lower-case, without spaces, '_' or '-'): labelling tools
# write _background_, __background__, unlabeled, void, clutter, other, none.
BACKGROUND_NAMES = frozenset(
    {
        "background",
        "backgrounds",
        "bg",
        "bgd",
        "bkg",
        "void",
        "unlabeled",
        "unlabelled",
        "nolabel",
        "unlabel",
        "unannotated",
        "none",
        "nothing",
        "null",
        "empty",
        "other",
        "others",
        "rest",
        "clutter",
        "unknown",
        "ignore",
        "negative",
    }
)


@dataclass(frozen=True)
class ScoreChoice:
    """``kind`` is ``foreground`` or ``all``; ``reason`` says why, for the console and the checkpoint."""

    kind: str
    reason: str

    @property
    def name(self) -> str:
        """The key of the score in validation results, metrics.csv and reports: ``dice_fg`` or ``miou``."""
        return SCORE_NAMES[self.kind]

    @property
    def label(self) -> str:
        return SCORE_LABELS[self.kind]

    def value(self, result: dict) -> float:
        """The chosen score of a validation or evaluation result."""
        return float(result[self.name])

    def from_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """The pooled score of ``(..., N, K, 3)`` per-image counts (true/false positives, false negatives), over
        the N images: ``(...)``, float64."""
        from unetseg.evaluation.metrics import nanmean, scores_from_counts

        scores = scores_from_counts(counts.sum(-3))
        values = scores["dice"][..., 1:] if self.kind == "foreground" else scores["iou"]
        return nanmean(values, dim=-1)

    def as_good(self, counts: torch.Tensor, peak: torch.Tensor) -> bool:
        """Whether the round with per-image ``counts`` is not measurably worse than the one with ``peak`` counts
        (``(N, K, 3)``, the same images): the paired difference of their pooled scores is within NOISE_Z jackknife
        standard errors. On a few validation images the error is large, and a higher score earlier in a run is
        more often the images' luck than a better model."""
        if counts.shape != peak.shape or len(counts) < 2:
            return False
        both = torch.stack([counts, peak]).long()
        left_out = both.sum(1, keepdim=True) - both  # (2, N, K, 3): every image left out in turn
        whole = self.from_counts(both)
        differences = self.from_counts(left_out.unsqueeze(2))  # (2, N)
        gap, gaps = float(whole[0] - whole[1]), differences[0] - differences[1]
        n = len(counts)
        error = math.sqrt((n - 1) / n * float(((gaps - gaps.mean()) ** 2).sum()))
        return math.isfinite(gap) and math.isfinite(error) and gap >= -NOISE_Z * error

    def describe(self) -> dict[str, str]:
        """Which score this is and why, as data (checkpoints, JSON logs)."""
        return {"name": self.name, "kind": self.kind, "reason": self.reason}

    def record(self, best: float, step: int) -> dict:
        """What a checkpoint keeps: the best value under its own name, which score it is, why, and its step."""
        return {self.name: best, **self.describe(), "step": step}

    @classmethod
    def from_record(cls, record: dict | None) -> ScoreChoice | None:
        """The choice a checkpoint recorded; None for checkpoints written before scores were chosen."""
        if not isinstance(record, dict) or record.get("kind") not in SCORE_KINDS:
            return None
        return cls(record["kind"], str(record.get("reason", "the score the model was trained with")))


def is_background_name(name: str) -> bool:
    """True for names such as background, bg, _background_, void, unlabeled, other."""
    key = re.sub(r"[\s_\-.]+", "", str(name).lower())
    return key in BACKGROUND_NAMES or key.startswith("background") or key.endswith("background")


def _default_names(class_map: ClassMap) -> bool:
    """The names ClassMap makes up when nothing named the classes (background, class1, class2, ...)."""
    return class_map.names == ["background", *(f"class{i}" for i in range(1, class_map.num_classes))]


def _unnamed_choice(class_map: ClassMap) -> ScoreChoice:
    """No names to go by: the mask value (or colour) of class 0 decides."""
    first = class_map.values[0]
    if class_map.is_color:
        if list(first) == [0, 0, 0]:
            return ScoreChoice("foreground", "class 0 is black in colour masks: background, left out of the mean")
        return ScoreChoice("all", f"colour masks have no black class (class 0 is {list(first)}): every class scored")
    if class_map.num_classes == 2:
        return ScoreChoice("foreground", "binary masks: the score is the foreground class's")
    if int(first) == 0:
        return ScoreChoice("foreground", "class 0 is mask value 0 with no classes file: background, left out")
    return ScoreChoice("all", f"no mask value 0 (class 0 is value {first}): every class is a real class, scored")


def choose_score(class_map: ClassMap, override: str | None = "auto") -> ScoreChoice:
    """The score that ranks models on this class map, with the reason.

    ``override`` is ``--score``: ``foreground`` or ``all`` win; ``auto`` (or None) takes ``score:`` from the classes
    file when it has one, else looks at class 0: its name when the classes are named, else its mask value.
    """
    override = override or "auto"
    if override not in SCORE_OPTIONS:
        raise UserError(f"--score {override}: choose one of {', '.join(SCORE_OPTIONS)}")
    if override != "auto":
        return ScoreChoice(override, f"--score {override}")
    from_file = getattr(class_map, "score", None)
    if from_file in SCORE_KINDS:
        return ScoreChoice(from_file, f"score: {from_file} in the classes file")
    if class_map.num_classes < 2:
        return ScoreChoice("all", "a single class: it is scored")
    if _default_names(class_map):
        return _unnamed_choice(class_map)
    name = class_map.names[0]
    if is_background_name(name):
        return ScoreChoice("foreground", f"class 0 is named {name!r}: background, left out of the mean")
    return ScoreChoice("all", f"class 0 is named {name!r}: a real class, scored")


def checkpoint_choice(ckpt: dict, class_map: ClassMap, override: str | None = "auto") -> ScoreChoice:
    """The score for a checkpoint: ``--score`` when given, else the one it was trained with, else from its classes."""
    if override and override != "auto":
        return choose_score(class_map, override)
    return ScoreChoice.from_record(ckpt.get("score")) or choose_score(class_map)


def round_scores(result: dict, choice: ScoreChoice) -> dict[str, float]:
    """The means a validation round logs (metrics.csv columns), the chosen score first: ``dice_fg`` and ``iou_fg``
    for the foreground, ``miou`` and ``dice_mean`` (over every class) for all classes."""
    keys = ("dice_fg", "iou_fg") if choice.kind == "foreground" else ("miou", "dice_mean")
    return {key: result[key] for key in keys}


def is_better(score: float, best: float) -> bool:
    """Whether a validation round beats the best so far (higher is better; a round without a score never does)."""
    return not math.isnan(score) and score > best
