"""Test-time augmentation: predict on flipped (and rotated) copies and average the probabilities.

``flips`` uses the 4 views made by horizontal and vertical flips; ``full`` the 8 views of the square's symmetry
group (flips and 90-degree turns). Each view's prediction is turned back before averaging, so for a model that is
itself equivariant to these transforms TTA changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from unetseg.errors import UserError

# A view is (quarter turns, flip the width axis); with flips of the height axis expressed as turn + flip.
MODES = {
    "flips": [(0, False), (0, True), (2, True), (2, False)],  # identity, h-flip, v-flip, h+v flip (= 180-degree turn)
    "full": [(k, flip) for k in range(4) for flip in (False, True)],
}


def views(mode: str | None) -> list[tuple[int, bool]]:
    """The views of a TTA mode (``None``: the image itself only)."""
    if mode is None:
        return [(0, False)]
    if mode not in MODES:
        raise UserError(f"--tta {mode}: unknown mode; use --tta (flips) or --tta full (flips and 90-degree turns)")
    return MODES[mode]


def apply(x: torch.Tensor, view: tuple[int, bool]) -> torch.Tensor:
    """``(..., H, W)`` seen in ``view``: turned ``k`` quarter turns, then flipped left-right."""
    turns, flip = view
    x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return x.flip(-1) if flip else x


def invert(y: torch.Tensor, view: tuple[int, bool]) -> torch.Tensor:
    """Undo :func:`apply`: flip back, then turn back."""
    turns, flip = view
    y = y.flip(-1) if flip else y
    return torch.rot90(y, -turns, dims=(-2, -1)) if turns else y


def average(
    predict: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
    x: torch.Tensor,
    size: tuple[int, int],
    mode: str | None,
) -> torch.Tensor:
    """Mean over ``mode``'s views of ``invert(predict(apply(x), size))``.

    ``predict(view, size)`` returns probabilities ``(B, K, *size)``; ``size`` is the output size of the
    untransformed image, passed turned for views with an odd number of quarter turns.
    """
    chosen = views(mode)
    total = None
    for view in chosen:
        view_size = size[::-1] if view[0] % 2 else size
        probs = invert(predict(apply(x, view), view_size), view)
        total = probs if total is None else total + probs
    return total if len(chosen) == 1 else total / len(chosen)
