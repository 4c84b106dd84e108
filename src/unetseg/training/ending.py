"""How a run ends: the reason and exit status for each kind of ending, and the final report."""

from __future__ import annotations

import contextlib

import torch

from unetseg.core import distributed
from unetseg.data.sampler import TrainBatches
from unetseg.errors import UserError
from unetseg.training.state import Run
from unetseg.training.summary import report_end


def out_of_memory(device: torch.device, batches: TrainBatches) -> str:
    return (
        f"out of memory on {device} with batch {batches.batch_size} and patch "
        f"{batches.patch[0]}x{batches.patch[1]}; try a smaller -b/--batch-size, a smaller --patch-size, "
        "--checkpointing, or --amp (last.pt holds the last saved step)"
    )


def unexpected(err: BaseException) -> tuple[str, int]:
    """How an exception that escapes the loop is reported before it propagates."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted again: stopped at once; last.pt holds the last saved step", 130
    if isinstance(err, UserError):
        return str(err), 2
    return f"internal error ({type(err).__name__}: {str(err)[:200]})", 1


def finish(run: Run, reason: str, code: int) -> dict:
    """Wait for the checkpoints, then the final summary, whose last line says why the run ended; unlock."""
    out, state = run.out, run.state
    score = run.choice.name
    try:
        try:
            out.writer.close()  # every checkpoint on disk before the run is reported finished
        except UserError as err:  # the last background write failed (e.g. the disk filled up)
            reason, code = (str(err), 2) if code in (0, 2) else (f"{reason}; also: {err}", code)
        state.elapsed = run.clock.elapsed()
        best = out.dir / "checkpoints" / "best.pt"
        with contextlib.suppress(UserError):  # train.log itself may be on the full disk: the console still shows
            report_end(out.log, state, score, reason, code, best)
        with contextlib.suppress(UserError):
            out.log.close()
        distributed.cleanup(run.hw.dist, finished=True)
    finally:
        if out.lock:
            out.lock.release()
    return {
        "best_score": run.state.best,
        "score_name": score,
        f"best_{score}": run.state.best,
        "best_step": run.state.best_step,
        "run_dir": str(out.dir),
        "best_checkpoint": str(best),
        "steps": run.state.step,
        "skipped_steps": run.state.skipped_steps,
        "reason": reason,
        "exit_code": code,
    }
