"""``--logger mlflow``: the resolved config as params, the scores of every round as metrics, and report.html and
best.pt as artifacts of one MLflow run.

Offline first: with no ``MLFLOW_TRACKING_URI`` the run goes to a file store in ``<run dir>/mlruns`` (like
``tensorboard/`` and ``wandb/``, the run directory holds all that the run wrote; view it with
``mlflow ui --backend-store-uri <run dir>/mlruns``). ``MLFLOW_TRACKING_URI`` (a server, ``sqlite:///...``, or one
shared folder for all runs) is respected. A server that cannot be reached never holds or fails training: it is
probed with a short connect timeout before the run starts, MLflow's own HTTP retries are turned down to a few
seconds, and any later error drops the backend with a warning (``RunLog._each``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

PROBE_TIMEOUT = 1.0  # s: a reachable tracking server accepts a connection in milliseconds
HTTP_SETTINGS = {  # MLflow's own defaults retry for minutes; the user's environment still wins
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
EXPERIMENT = "unetseg"  # MLFLOW_EXPERIMENT_NAME overrides
PARAM_BATCH = 100  # MLflow accepts at most 100 params per log_batch call
PARAM_LENGTH = 6000  # and values of at most 6000 characters
TRAIN_NAMES = {"train_loss": "train/loss", "lr": "train/lr", "img_s": "train/img_s"}
ID_FILE = "mlflow-run-id"  # in the run directory: a resumed unetseg run continues its MLflow run


def tracking_uri(run_dir: Path | None) -> str:
    """``MLFLOW_TRACKING_URI`` when set; else the file store ``<run dir>/mlruns``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return (Path(run_dir or ".").resolve() / "mlruns").as_uri()


def reachable(uri: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when ``uri`` is local or its server accepts a TCP connection within ``timeout``; else why not."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout):
            return None
    except OSError as err:
        return f"{parsed.hostname}:{port} did not answer within {timeout:g} s ({type(err).__name__}: {err})"


def metric_name(name: str) -> str:
    """MLflow allows letters, digits, ``_ - . / :`` and spaces in names; class names may hold anything."""
    return re.sub(r"[^\w\-./: ]", "_", str(name))


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"a.b": "value"}`` strings within MLflow's length limit."""
    params = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            params |= flat_params(value, f"{name}.")
        else:
            params[metric_name(name)] = str(value)[:PARAM_LENGTH]
    return params


class MlflowLog:
    """One MLflow run: params once, metrics per logging interval and validation round, artifacts at the end."""

    name = "MLflow"

    def __init__(self, client: object, run_id: str, run_dir: Path) -> None:
        self.client, self.run_id, self.run_dir = client, run_id, run_dir

    @classmethod
    def open(cls, run_dir: Path, config: dict, warn: Callable[[str], None]) -> MlflowLog | None:
        """Start (or continue) the MLflow run; on any failure warn and return None: training goes on."""
        uri = tracking_uri(run_dir)
        problem = reachable(uri)
        if problem:
            warn(f"MLflow tracking server {uri} is unreachable: {problem}; training continues without it")
            return None
        for key, value in HTTP_SETTINGS.items():
            os.environ.setdefault(key, value)
        if uri.startswith("file:") and "MLFLOW_TRACKING_URI" not in os.environ:
            # MLflow 3 refuses new file stores unless asked; our default store is one folder in the run dir.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            run_id = cls._run_id(client, run_dir)
            params = [Param(k, v) for k, v in flat_params(config).items()]
            existing = set(client.get_run(run_id).data.params)
            params = [p for p in params if p.key not in existing]  # a resumed run keeps its params
            for start in range(0, len(params), PARAM_BATCH):
                client.log_batch(run_id, params=params[start : start + PARAM_BATCH])
        except Exception as err:  # MlflowException, connection errors, a read-only store...: training goes on
            warn(f"MLflow ({uri}) did not start: {type(err).__name__}: {str(err)[:200]}; training continues")
            return None
        return cls(client, run_id, run_dir)

    @staticmethod
    def _run_id(client: object, run_dir: Path) -> str:
        """The run this run directory logged to before (a resume), else a new one in the experiment."""
        id_file = run_dir / ID_FILE
        if id_file.is_file():
            with contextlib.suppress(Exception):  # deleted, or another store: start a new run
                run_id = id_file.read_text().strip()
                client.update_run(run_id, status="RUNNING")
                return run_id
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        found = client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else client.create_experiment(name)
        run = client.create_run(experiment, run_name=run_dir.name, tags={"unetseg.run_dir": str(run_dir)})
        id_file.write_text(run.info.run_id)
        return run.info.run_id

    def _metrics(self, step: int, values: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(metric_name(k), float(v), now, int(step))
            for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def scalars(self, step: int, values: dict) -> None:
        """``train/loss``, ``train/lr``, ``train/img_s`` (and GPU memory) at the logging interval."""
        self._metrics(step, {TRAIN_NAMES.get(k, f"system/{k}"): v for k, v in values.items()})

    def validation(self, step: int, row: dict, hists: dict, views: list[dict]) -> None:
        """Every score of the round as ``val/<name>`` (histograms and panels are in report.html)."""
        skip = {"step", "epoch", "train_loss", "lr", "img_s"}
        scores = {f"val/{k.removeprefix('val_')}": v for k, v in row.items() if k not in skip}
        self._metrics(step, scores | {"epoch": row.get("epoch")})

    def close(self) -> None:
        """Upload report.html and best.pt, then end the run."""
        for path, folder in ((self.run_dir / "report.html", None), (self.run_dir / "checkpoints" / "best.pt", "model")):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), folder)
        self.client.set_terminated(self.run_id)
