"""Where a run reports: the console (text or JSON lines) and train.log, metrics.csv, plots/, report.html, and the
optional TensorBoard, Weights & Biases and MLflow backends (``--logger csv,tensorboard,wandb,mlflow``).

One ``RunLog`` fans out to all of them. Values reach it already on the host (the trainer reads the device only
every ``--log-every`` steps), so nothing here forces a device synchronisation in the training loop; the slow
parts (drawing PNGs, TensorBoard and W&B writes) run on one background thread. Processes other than rank 0 get
``run_dir=None, quiet=True``: they print nothing and write nothing.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from unetseg.core.atomic import storage_error, write_atomic
from unetseg.errors import UserError
from unetseg.tracking import backends as trackers
from unetseg.tracking import charts, mlflow_log, plots, report_html
from unetseg.tracking.html import write_page

KNOWN_LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")
# report.html and curves.png are redrawn after a round only while all the drawings so far, this one and the final
# one (always drawn) stay within this share of the time since the run started: frequent short rounds (a small
# dataset, a fast GPU) and very short runs skip refreshes instead of paying more.
REPORT_SHARE = 0.05
# What a drawing is taken to cost until one has been timed (0.4-0.7 s measured on a 2-core CPU: the curves are
# drawn by matplotlib).
FIRST_DRAWING_S = 0.5


def parse_loggers(loggers: str) -> list[str]:
    """``"csv,tensorboard"`` -> the backend names; unknown names and missing packages are a UserError."""
    names = [n for n in (s.strip().lower() for s in loggers.split(",")) if n]
    unknown = [n for n in names if n not in KNOWN_LOGGERS]
    if unknown:
        raise UserError(
            f"--logger {loggers}: unknown logger(s) {', '.join(unknown)}; known: {', '.join(KNOWN_LOGGERS)}"
        )
    backends = [n for n in dict.fromkeys(names) if n != "csv"]  # csv is always on
    for name in backends:
        trackers.require(name)  # on every rank, so that all of them stop alike
    return backends


class RunLog:
    """Console lines mirrored into ``train.log``, one ``metrics.csv`` row per validation round, plots and backends."""

    def __init__(
        self, run_dir: Path | None, quiet: bool = False, loggers: str = "csv", log_format: str = "text"
    ) -> None:
        self.requested = parse_loggers(loggers)
        self.quiet = quiet
        self.json = log_format == "json"
        self.run_dir = run_dir
        self.log_file = open(run_dir / "train.log", "a") if run_dir else None  # noqa: SIM115 - closed in close()
        self.csv_path = run_dir / "metrics.csv" if run_dir else None
        self.columns: list[str] | None = None
        self.csv_rows: list[list] | None = None  # metrics.csv as written (header first); rewritten whole each round
        self.class_map: object | None = None
        self.backends: list = []
        self.resumed_at: int | None = None
        # Plots and backend writes run in order on one background thread: the training thread only hands them
        # host data (PNG encoding and file I/O release the GIL, so they overlap the next steps).
        self.worker: ThreadPoolExecutor | None = None
        self.pending: list[Future] = []
        # What report.html shows besides metrics.csv: the start-up summary, the best round's confusion matrix and
        # gallery, the plan (when the trainer hands it over) and the end of the run.
        self.start_fields: dict | None = None
        self.config: dict = {}
        self.plan: list | None = None
        self.best_confusion: list | None = None
        self.best_panels: list[dict] = []
        self.done: dict | None = None
        self.clock = time.monotonic
        self.opened_at = self.clock()  # reset by start(): the report's share is of the time since then
        self.queued = 0  # drawings handed to the logging thread
        self.costs: list[float] = []  # seconds each finished drawing took (appended on the logging thread)
        self.drawn: tuple[list[dict], dict[str, bytes]] | None = None  # the last rows drawn and their charts
        self.gallery_due: tuple | None = None  # gallery.png of a best round whose refresh was skipped

    @property
    def wants_images(self) -> bool:
        """True when a backend shows prediction panels at every validation round (never on other ranks)."""
        return bool(self.requested and self.run_dir)

    def describe(self) -> str:
        """The loggers in use, for the start-up summary, e.g. ``csv, tensorboard, wandb (offline)``."""
        shown = {"wandb": f"wandb ({trackers.wandb_mode()})"}
        shown["mlflow"] = f"mlflow ({mlflow_log.tracking_uri(self.run_dir)})"
        return ", ".join(["csv", *(shown.get(n, n) for n in self.requested)])

    @property
    def bars(self) -> bool:
        """Whether progress bars may draw: text mode, not quiet."""
        return not (self.quiet or self.json)

    def _emit(self, event: str, lines: list[str], fields: dict, stream: object = None) -> None:
        """Lines (or one JSON object) on the console unless quiet; the lines always in train.log."""
        if not self.quiet:
            out = stream or sys.stdout
            if self.json:
                print(json_line(event, fields), file=out, flush=True)
            else:
                tqdm.write("\n".join(lines), file=out)  # clears and redraws a progress bar in the way
                out.flush()
        self._log("".join(line + "\n" for line in lines))

    def info(self, message: str) -> None:
        """One console line (unless quiet), always kept in train.log."""
        self._emit("info", [message], {"message": message})

    def warn(self, message: str) -> None:
        """A warning on stderr (unless quiet), always kept in train.log."""
        self._emit("warning", [f"warning: {message}"], {"message": message}, sys.stderr)

    def error(self, message: str) -> None:
        """A failure of the run: on stderr even in quiet mode."""
        if self.json:
            print(json_line("error", {"message": message}), file=sys.stderr, flush=True)
        else:
            print(f"error: {message}", file=sys.stderr, flush=True)
        self._log(f"error: {message}\n")

    def _log(self, text: str) -> None:
        """Append to train.log; a full or read-only disk stops the file (the console goes on) and is a UserError."""
        if not self.log_file:
            return
        try:
            self.log_file.write(text)
            self.log_file.flush()
        except OSError as err:
            handle, self.log_file = self.log_file, None
            with contextlib.suppress(OSError):
                handle.close()
            mapped = storage_error(err, self.run_dir / "train.log")
            if mapped is None:
                raise
            raise mapped from None

    def event(self, name: str, lines: list[str], fields: dict) -> None:
        """A block of console lines that JSON mode shows as one ``{"event": name, **fields}`` object."""
        if name == "done":
            self.done = dict(fields)  # the final report.html says how the run ended
        self._emit(name, lines, fields)

    def start(self, lines: list[str], fields: dict, class_map: object, config: dict) -> None:
        """The start-up summary; opens the backends now that the data (class names, colours) is known."""
        self.class_map = class_map
        self.start_fields, self.config = dict(fields), dict(config)
        self.opened_at = self.clock()
        if self.run_dir:
            self._open_backends(config)
        self.event("start", lines, fields)

    def _open_backends(self, config: dict) -> None:
        names = list(getattr(self.class_map, "names", []))
        for name in self.requested:
            if name == "tensorboard":
                purge = None if self.resumed_at is None else self.resumed_at + 1
                self.backends.append(trackers.TensorBoardLog(self.run_dir / "tensorboard", purge))
            elif name == "mlflow":
                backend = mlflow_log.MlflowLog.open(self.run_dir, config, self.warn)
                if backend:
                    self.backends.append(backend)
            elif name == "wandb":
                wandb_config = config | {"class_map": getattr(self.class_map, "to_dict", dict)()}
                backend = trackers.WandbLog.open(self.run_dir, wandb_config, names, self.warn)
                if backend:
                    self.backends.append(backend)

    def _each(self, method: str, *args: object) -> None:
        """Call every backend (on the logging thread); one that fails is dropped with a warning, training goes on."""
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except Exception as err:  # a tracker's disk or network trouble must not end a training run
                self.backends.remove(backend)
                self.warn(f"{backend.name} logging stopped ({type(err).__name__}: {err}); training continues")

    def scalars(self, step: int, values: dict) -> None:
        """Training scalars at the logging interval (loss, lr, img/s, GPU memory); one JSON line in JSON mode."""
        values = values | trackers.gpu_memory()
        if self.json and not self.quiet:
            print(json_line("train", {"step": step} | values), flush=True)
        if self.backends:
            self._submit(self._each, "scalars", step, values)

    def validation(
        self,
        step: int,
        row: dict,
        model: object,
        panels: list[dict] | None,
        improved: bool,
        message: str = "",
        confusion: list | None = None,
    ) -> None:
        """A validation round: its console line, metrics.csv row, plots, report.html, and histograms and panels
        for backends. ``confusion`` (pixel counts, truth x prediction) is kept for the report when ``improved``."""
        if message:
            self.event("validation", [message], row | {"improved": improved})
        self.metrics(row)
        if improved:
            self.best_confusion = confusion
            self.best_panels = list(panels or [])
        if improved and panels and self.run_dir:
            name = "miou" if "miou" in row else "dice_fg"  # the score the round was ranked by
            title = f"step {step}: best validation {name} {row.get(name, math.nan):.4f}"
            self.gallery_due = (self.run_dir / "plots" / "gallery.png", self.best_panels, self.class_map, title)
        if self.run_dir and self.may_draw():
            self.queued += 1
            self._submit(self.write_pictures, self.rows())
            if self.gallery_due:
                self._submit(plots.save_gallery, *self.gallery_due)
                self.gallery_due = None
        if self.backends:
            hists = trackers.histograms(model)  # now: the next step changes the weights and clears the gradients
            views = plots.panel_views(panels or [], plots.class_colors(self.class_map))
            self._submit(self._each, "validation", step, dict(row), hists, views)

    def may_draw(self) -> bool:
        """Whether a refresh now keeps every drawing so far, this one and the final one within REPORT_SHARE of the
        time since the run started (a queued drawing not yet timed counts at the last one's cost)."""
        costs = list(self.costs)
        cost = costs[-1] if costs else FIRST_DRAWING_S
        spent = sum(costs) + cost * (self.queued - len(costs))
        return spent + 2 * cost <= REPORT_SHARE * (self.clock() - self.opened_at)

    def _submit(self, job: object, *args: object) -> None:
        """Run ``job(*args)`` on the logging thread; errors of earlier jobs surface here, in order."""
        self._collect(wait=False)
        if self.worker is None:
            self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unetseg-log")
        self.pending.append(self.worker.submit(job, *args))

    def _collect(self, wait: bool) -> None:
        """Drop finished jobs, re-raising a plot's error (backends' own errors only warn: see ``_each``)."""
        for job in [j for j in self.pending if wait or j.done()]:
            self.pending.remove(job)
            try:
                job.result()
            except OSError as err:  # a plot on a full or read-only disk: the user's to fix, named
                mapped = storage_error(err, err.filename or self.run_dir)
                if mapped is None:
                    raise
                raise mapped from None

    def metrics(self, row: dict) -> None:
        """Add one row to metrics.csv (rewritten atomically); the header comes from the first row (a resumed run
        keeps its own)."""
        if not self.csv_path:
            return
        if self.csv_rows is None:
            self.csv_rows = self._read_csv() or [list(row)]
            self.columns = [str(c) for c in self.csv_rows[0]]
        self.csv_rows.append([_fmt(row.get(c, "")) for c in self.columns])
        self._write_csv()

    def _read_csv(self) -> list[list[str]]:
        if not (self.csv_path and self.csv_path.exists()):
            return []
        with open(self.csv_path, newline="") as handle:
            return [r for r in csv.reader(handle) if r]

    def _write_csv(self) -> None:
        text = io.StringIO()
        csv.writer(text).writerows(self.csv_rows)
        write_atomic(self.csv_path, text.getvalue().encode())

    def rows(self) -> list[dict]:
        """metrics.csv as dicts of strings (what the curves are drawn from, so they survive a resume)."""
        if not (self.csv_path and self.csv_path.exists()):
            return []
        with open(self.csv_path, newline="") as handle:
            return list(csv.DictReader(handle))

    def truncate_after(self, step: int) -> None:
        """Drop metrics.csv rows after ``step``, which a resumed run redoes (TensorBoard purges them when it opens)."""
        self.resumed_at = step
        rows = self._read_csv()
        if not rows:
            return
        column = rows[0].index("step") if "step" in rows[0] else 0
        self.csv_rows = [rows[0]] + [r for r in rows[1:] if int(float(r[column])) <= step]
        self.columns = list(rows[0])
        self._write_csv()

    def write_pictures(self, rows: list[dict]) -> None:
        """The learning curves, drawn once: ``plots/curves.png`` and report.html (on the logging thread). Rows
        drawn already (the final report after a refreshed last round) reuse their charts."""
        started = time.monotonic()
        if self.drawn and self.drawn[0] == rows:
            pictures = self.drawn[1]
        else:
            all_classes = (self.start_fields or {}).get("score", {}).get("name") == "miou"
            pictures = charts.curves(rows, self.class_map, all_classes)
            curves = self.run_dir / "plots" / "curves.png"
            curves.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(curves, charts.strip(pictures))
            self.drawn = (rows, pictures)
        self.write_report(rows, pictures)
        self.costs.append(time.monotonic() - started)

    def write_report(self, rows: list[dict] | None = None, pictures: dict[str, bytes] | None = None) -> None:
        """Write ``report.html`` (atomically) from what the run has recorded so far."""
        if not (self.run_dir and self.start_fields is not None):
            return
        text = report_html.run_page(
            self.run_dir.name,
            self.rows() if rows is None else rows,
            self.class_map,
            self.start_fields,
            self.config,
            self.best_confusion,
            self.best_panels,
            self.plan,
            self.done,
            pictures,
        )
        write_page(self.run_dir / "report.html", text)

    def close(self) -> None:
        """Finish the queued plots and writes, write the final report.html, close the backends (their uploads are
        bounded) and train.log."""
        try:
            self._collect(wait=True)
            if self.run_dir:  # the final pictures and report, whatever the last rounds skipped
                self.write_pictures(self.rows())
                if self.gallery_due:
                    plots.save_gallery(*self.gallery_due)
                    self.gallery_due = None
        finally:
            if self.worker:
                self.worker.shutdown()
                self.worker = None
            self._each("close")
            self.backends = []
            if self.log_file:
                self.log_file.close()
                self.log_file = None


def json_line(event: str, fields: dict) -> str:
    """One JSON object; NaN and infinities become null (JSON has no such numbers)."""
    return json.dumps({"event": event, **{k: _plain(v) for k, v in fields.items()}}, default=str)


def _plain(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _fmt(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value
