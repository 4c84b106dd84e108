"""``--logger mlflow``: what a run logs, read back with MLflow's own client; an unreachable server costs nothing."""

from __future__ import annotations

import csv
import time

import pytest

from conftest import make_dataset
from unetseg.cli import main
from unetseg.data.classmap import ClassMap
from unetseg.tracking.mlflow_log import MlflowLog, flat_params, metric_name, tracking_uri
from unetseg.tracking.runlog import RunLog

pytest.importorskip("mlflow")

TINY = ["--width", "4", "-b", "4", "--workers", "1", "--val-rounds", "2", "--quiet"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One epoch with --logger mlflow into the default store (<run>/mlruns), then a resume to a second epoch."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
            patch.delenv(name, raising=False)
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # restored afterwards (the backend sets it for its store)
        root = tmp_path_factory.mktemp("mlflow")
        data = make_dataset(root / "data", count=12, size=(32, 32), values=(0, 128, 255))
        run = root / "run"
        args = ["train", "--data", str(data), "--out", str(run), "-v", "25", "--logger", "mlflow", *TINY]
        assert main([*args, "-e", "1"]) == 0
        first = (run / "mlflow-run-id").read_text()
        assert main(["train", "--resume", str(run), "-e", "2", "--quiet"]) == 0
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri(run))
        yield run, client, first


def test_params_metrics_and_artifacts_read_back(logged):
    run, client, run_id = logged
    assert (run / "mlflow-run-id").read_text() == run_id  # the resume continued the same MLflow run
    record = client.get_run(run_id)
    assert record.info.status == "FINISHED" and record.info.run_name == run.name
    assert record.data.params["learning_rate"] and record.data.params["width"] == "4"
    assert record.data.params["logger"] == "mlflow"
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    history = client.get_metric_history(run_id, "val/dice_fg")
    assert [m.step for m in history] == [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [m.value for m in history] == pytest.approx([float(r["dice_fg"]) for r in rows], abs=1e-5)
    assert client.get_metric_history(run_id, "val/dice_class2") and client.get_metric_history(run_id, "train/loss")
    top = {a.path for a in client.list_artifacts(run_id)}
    assert "report.html" in top and "model/best.pt" in {a.path for a in client.list_artifacts(run_id, "model")}


def test_unreachable_server_is_skipped_at_once_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing listens
    warnings = []
    log = RunLog(tmp_path, quiet=True, loggers="mlflow")  # imports mlflow (once per process)
    log.warn = warnings.append
    started = time.monotonic()
    log.start([], {"classes": []}, ClassMap(values=[0, 255]), {"lr": 0.1})
    elapsed = time.monotonic() - started
    log.close()
    assert elapsed < 1.0, elapsed
    assert log.backends == [] and "unreachable" in warnings[0] and "training continues" in warnings[0]
    assert MlflowLog.open(tmp_path, {}, warnings.append) is None


def test_names_and_params_within_mlflow_limits():
    assert metric_name("val/dice_cell (α) #2") == "val/dice_cell _α_ _2"  # MLflow: letters, digits, _-./: and spaces
    params = flat_params({"a": {"b": 1}, "long": "x" * 7000, "odd#name": None})
    assert params == {"a.b": "1", "long": "x" * 6000, "odd_name": "None"}


def test_default_store_is_inside_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == (tmp_path.resolve() / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    assert tracking_uri(tmp_path) == "sqlite:///x.db"
