"""Pilot runs: where the plan is unsure, measure instead of guessing.

The plan's ``pilots`` row names the candidate recipes (``planned | scale=0.75 patch_size=192 | learning_rate=0.003``).
Each trains for its share of PILOT_SHARE of the time budget into ``RUN/pilots/<n>-<label>/`` and is scored on the
validation split; the winner's weights start the main run, which trains with the winner's options for the rest of
the budget. The table goes to the console, to ``RUN/pilots/pilots.json`` and, as the plan's ``pilots`` row, to
report.html.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from pathlib import Path

import yaml

from unetseg.config import TrainConfig, parse_duration
from unetseg.core.atomic import write_atomic
from unetseg.data.prepare import prepare_for
from unetseg.errors import UserError
from unetseg.training.plan import pilot_seconds
from unetseg.training.rundir import PILOTS_DIR, open_run_dir


@dataclasses.dataclass
class Pilot:
    """One candidate recipe and how its pilot went."""

    label: str  # "planned", or the options it changes: "learning_rate=0.003"
    options: dict  # the options it changes
    budget_s: float = 0.0
    seconds: float = 0.0  # wall time, set-up included
    steps: int = 0
    score: float | None = None
    checkpoint: str | None = None  # its best.pt
    outcome: str = ""


def parse_candidates(value: str) -> list[Pilot]:
    """The plan's ``pilots`` value as candidates; ``none`` is no pilot."""
    if value in ("none", ""):
        return []
    pilots = []
    for label in (part.strip() for part in value.split("|")):
        pairs = [item.split("=", 1) for item in label.split()] if label != "planned" else []
        pilots.append(Pilot(label, {name: yaml.safe_load(text) for name, text in pairs}))
    return pilots


def run_pilots(cfg: TrainConfig, rows: list, started: float) -> tuple[TrainConfig, int]:
    """Train the plan's pilots; returns the main run's configuration (the winner's options, starting from its
    weights) and an exit status (0, or the signal's when a pilot was interrupted).

    ``rows`` are the plan's ``(option, value used, why)``: the pilots' row is replaced by the outcome.
    """
    from unetseg.training.loop import fit  # the loop imports the plan; the pilots run it

    index = next((i for i, row in enumerate(rows) if row[0] == "pilots"), None)
    pilots = parse_candidates(str(rows[index][1])) if index is not None else []
    if len(pilots) < 2:
        return cfg, 0
    run_dir = Path(cfg.out)
    root = prepare_pilot_dir(run_dir, cfg.overwrite)
    budget = parse_duration(cfg.time_budget)
    share = pilot_seconds(budget, len(pilots))
    say(cfg, f"pilots: {len(pilots)} candidates, {share:.0f} s each, scored on the validation split")
    for scale in dict.fromkeys(p.options.get("scale", cfg.scale) for p in pilots):
        # Decoded (and cached) before any pilot's clock starts, so that no pilot pays for the others' data.
        prepare_for(dataclasses.replace(cfg, scale=scale))
    for number, pilot in enumerate(pilots):
        pilot.budget_s = share
        out = root / f"{number}-{slug(pilot.label)}"
        options = {
            "out": str(out),
            "time_budget": f"{share:.3f}s",
            "quiet": True,
            "logger": "csv",
            "overwrite": True,
            "plan": False,
            "pilot": False,
        }
        began = time.monotonic()
        result = fit(dataclasses.replace(cfg, **pilot.options, **options), None, began)
        pilot.seconds, pilot.steps = time.monotonic() - began, result["steps"]
        best = result["best_score"]
        pilot.score = best if best is not None and best > float("-inf") else None
        pilot.checkpoint = result["best_checkpoint"] if Path(result["best_checkpoint"]).is_file() else None
        pilot.outcome = result["reason"]
        if result["exit_code"] in (130, 143):
            return cfg, result["exit_code"]
        say(cfg, f"  {pilot.label:<40} {pilot.score if pilot.score is not None else float('nan'):.4f}")
    scored = [p for p in pilots if p.score is not None and p.checkpoint]
    if not scored:
        say(cfg, "pilots: no pilot produced a score; training the plan's first choice from scratch")
        return cfg, 0
    winner = max(scored, key=lambda p: p.score)  # the first (the plan's own choice) on a tie
    payload = record(root, pilots, winner, budget, time.monotonic() - started, result["score_name"])
    replace_row(rows, index, pilots, winner, result["score_name"])
    if cfg.log_format == "json":
        from unetseg.tracking.runlog import json_line

        print(json_line("pilots", payload), flush=True)
    for line in table(pilots, winner, result["score_name"]):
        say(cfg, line)
    # The run directory now holds the pilots: the main run must not clear it (--overwrite was applied above).
    return dataclasses.replace(cfg, **winner.options, load=winner.checkpoint, overwrite=False), 0


def prepare_pilot_dir(run_dir: Path, overwrite: bool) -> Path:
    """``RUN/pilots``, in a run directory checked as the main run will check it (and locked while it is cleared)."""
    lock, _ = open_run_dir(run_dir, False, overwrite)
    try:
        root = run_dir / PILOTS_DIR
        if root.exists():
            shutil.rmtree(root)  # an earlier, interrupted start's pilots, or --overwrite's previous run's
        root.mkdir()
    except OSError as err:
        raise UserError(f"--out {run_dir}: cannot write the pilot runs ({err.strerror})") from None
    finally:
        lock.release()
    return root


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-")[:60] or "planned"


def table(pilots: list[Pilot], winner: Pilot, score_name: str | None) -> list[str]:
    lines = [f"  {'candidate':<44} {'budget s':>8} {'took s':>7} {'steps':>6} {score_name or 'score':>8}"]
    for p in pilots:
        score = f"{p.score:.4f}" if p.score is not None else "-"
        mark = "  <- continues" if p is winner else ""
        lines.append(f"  {p.label:<44} {p.budget_s:>8.0f} {p.seconds:>7.1f} {p.steps:>6} {score:>8}{mark}")
    return lines


def record(root: Path, pilots: list[Pilot], winner: Pilot, budget: float, spent: float, score: str | None) -> dict:
    """``pilots.json``: every candidate, its time and score, and which one the main run continues."""
    payload = {
        "budget_s": budget,
        "spent_s": spent,  # from the command's start to the end of the last pilot (planning included)
        "score": score,
        "winner": winner.label,
        "pilots": [dataclasses.asdict(p) for p in pilots],
    }
    write_atomic(root / "pilots.json", (json.dumps(payload, indent=2) + "\n").encode())
    return payload


def replace_row(rows: list, index: int, pilots: list[Pilot], winner: Pilot, score: str | None) -> None:
    """The plan's pilots row, and the rows of the options the winner changes, as report.html shows them."""
    scores = ", ".join(f"{p.label} {p.score:.4f}" if p.score is not None else f"{p.label} -" for p in pilots)
    rows[index] = ("pilots", winner.label, f"{score or 'score'} after {pilots[0].budget_s:.0f} s each: {scores}")
    for i, (name, value, why) in enumerate(rows):
        if name in winner.options:
            rows[i] = (
                name,
                winner.options[name],
                f"the pilot with {winner.label} scored best (planned {value}: {why})",
            )


def say(cfg: TrainConfig, line: str) -> None:
    if not cfg.quiet and cfg.log_format != "json":
        print(line, flush=True)
