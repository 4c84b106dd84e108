"""Where a run reports: the console (and train.log), metrics.csv, and optional backends."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

from unetseg.errors import UserError

KNOWN_LOGGERS = ("csv",)


class RunLog:
    """Console lines mirrored into ``train.log``, and one ``metrics.csv`` row per validation round."""

    def __init__(self, run_dir: Path | None, quiet: bool = False, loggers: str = "csv") -> None:
        unknown = [n for n in (s.strip() for s in loggers.split(",")) if n and n not in KNOWN_LOGGERS]
        if unknown:
            raise UserError(
                f"--logger {loggers}: unknown logger(s) {', '.join(unknown)}; known: {', '.join(KNOWN_LOGGERS)}"
            )
        self.quiet = quiet
        self.run_dir = run_dir
        self.log_file = open(run_dir / "train.log", "a") if run_dir else None  # noqa: SIM115 - closed in close()
        self.csv_path = run_dir / "metrics.csv" if run_dir else None
        self.columns: list[str] | None = None

    def info(self, message: str) -> None:
        """One console line (unless quiet), always kept in train.log."""
        if not self.quiet:
            print(message, file=sys.stdout, flush=True)
        if self.log_file:
            self.log_file.write(message + "\n")
            self.log_file.flush()

    def warn(self, message: str) -> None:
        """A warning goes to stderr even in quiet mode."""
        print(f"warning: {message}", file=sys.stderr, flush=True)
        if self.log_file:
            self.log_file.write(f"warning: {message}\n")
            self.log_file.flush()

    @property
    def wants_images(self) -> bool:
        """True when a backend shows prediction panels at every validation round."""
        return False

    def scalars(self, step: int, values: dict) -> None:
        """Training scalars at the logging interval (loss, lr, img/s)."""

    def validation(self, step: int, row: dict, model: object, panels: list[dict] | None, improved: bool) -> None:
        """A validation round: its metrics.csv row (and, with backends, histograms and panels)."""
        self.metrics(row)

    def metrics(self, row: dict) -> None:
        """Append one row to metrics.csv; the header comes from the first row (a resumed run keeps it)."""
        if not self.csv_path:
            return
        if self.columns is None:
            if self.csv_path.exists() and self.csv_path.stat().st_size:
                with open(self.csv_path) as handle:
                    self.columns = next(csv.reader(handle))
            else:
                self.columns = list(row)
                with open(self.csv_path, "w", newline="") as handle:
                    csv.writer(handle).writerow(self.columns)
        with open(self.csv_path, "a", newline="") as handle:
            csv.writer(handle).writerow([_fmt(row.get(c, "")) for c in self.columns])

    def truncate_after(self, step: int) -> None:
        """Drop metrics.csv rows logged after ``step``: a resumed run redoes them."""
        if not (self.csv_path and self.csv_path.exists()):
            return
        with open(self.csv_path, newline="") as handle:
            rows = list(csv.reader(handle))
        if not rows:
            return
        column = rows[0].index("step") if "step" in rows[0] else 0
        kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[column])) <= step]
        with open(self.csv_path, "w", newline="") as handle:
            csv.writer(handle).writerows(kept)

    def close(self) -> None:
        if self.log_file:
            self.log_file.close()
            self.log_file = None


def _fmt(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value
