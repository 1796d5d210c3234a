"""--report-to: the run's scalars go to every tracker named (Accelerate's), TensorBoard by default.

TensorBoard and MLflow (its local file store) are real and offline here."""

from __future__ import annotations

import json

import pytest
import yaml

TRAIN = ["--max-steps", "4", "--lr", "3e-3", "--batch-size", "8", "--max-length", "16", "--quiet"]
SCALARS = {"ce", "kd", "pt", "loss", "lr", "share_ce", "share_kd", "share_pt", "dev/accuracy"}


def distill_args(teacher, sst2_dir, out, *extra) -> list:
    return ["distill", "--teacher", teacher, "--task", "sst2", "--data-dir", sst2_dir,
            "--output", out, "--student-layers", "2", "--allow-weak-teacher",
            "--logging-steps", "2", *TRAIN, *extra]  # fmt: skip


def tensorboard_tags(run) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert len({f.parent for f in files}) == 1, files  # one event directory, no hparams one
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.mark.slow
def test_tensorboard_and_mlflow_both_get_every_scalar(
    tiny_teacher, sst2_dir, tmp_path, pkd_cli, monkeypatch
):
    from mlflow.tracking import MlflowClient

    store = f"file://{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: the file store on request
    out = tmp_path / "pkd-run"
    pkd_cli.ok(distill_args(tiny_teacher, sst2_dir, out, "--report-to", "tensorboard,mlflow"))

    assert SCALARS <= tensorboard_tags(out)
    client = MlflowClient(store)
    (experiment,) = [e for e in client.search_experiments() if e.name == "pkd"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "pkd-run" and run.info.status == "FINISHED"
    assert SCALARS <= set(run.data.metrics)
    logged = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = {r["step"]: r["loss"] for r in logged if "loss" in r}
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert history == pytest.approx(steps)  # the same records as log.jsonl
    assert run.data.params["train.lr"] == "0.003" and run.data.params["weight.pt"] == "100.0"
    params = {k: run.data.params.get(k) for k in ("method", "teacher", "task", "student_layers")}
    assert params == {"method": "pkd", "teacher": str(tiny_teacher), "task": "sst2",
                      "student_layers": "2"}  # fmt: skip
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["report_to"] == ["tensorboard", "mlflow"]


def test_report_to_none_writes_no_tracker_files(tiny_bert, sst2_dir, tmp_path, pkd_cli):
    out = tmp_path / "run"
    pkd_cli.ok(["finetune", "--model", tiny_bert, "--task", "sst2", "--data-dir", sst2_dir,
                "--output", out, *TRAIN, "--report-to", "none"])  # fmt: skip
    assert not (out / "tensorboard").exists()
    assert (out / "log.jsonl").is_file() and (out / "metrics.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["report_to"] == ["none"]


def test_default_is_tensorboard():
    from pkd.config.sections import TrainConfig

    assert TrainConfig().report_to == ["tensorboard"]


@pytest.mark.parametrize(
    "value, expected",
    [
        ("tensorbord", "--report-to: unknown tracker 'tensorbord'; valid: tensorboard, mlflow"),
        ("all,mlflow", "--report-to: 'all' and 'none' stand alone, got all,mlflow"),
    ],
)
def test_bad_tracker_names_are_one_line_errors(
    value, expected, tiny_bert, sst2_dir, tmp_path, pkd_cli
):
    out = tmp_path / "run"
    args = ["finetune", "--model", tiny_bert, "--task", "sst2", "--data-dir", sst2_dir,
            "--output", out, *TRAIN, "--report-to", value]  # fmt: skip
    assert pkd_cli.error(args).startswith(expected)
    assert not out.exists()


def test_a_tracker_not_installed_is_refused_before_anything_is_written(
    tiny_teacher, sst2_dir, tmp_path, pkd_cli
):
    from accelerate.tracking import get_available_trackers

    from pkd.config.choices import TRACKERS

    installed = {str(t) for t in get_available_trackers()}
    missing = [t for t in TRACKERS if t not in installed]
    if not missing:
        pytest.skip("every tracker is installed here")
    out = tmp_path / "run"
    err = pkd_cli.error(distill_args(tiny_teacher, sst2_dir, out, "--report-to", missing[0]))
    assert err.startswith(f"--report-to: {missing[0]} is not installed (pip install "), err
    assert not out.exists()


@pytest.mark.slow
def test_mlflow_store_goes_into_the_run_not_the_current_directory(
    tiny_teacher, sst2_dir, tmp_path, pkd_cli, monkeypatch
):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "pkd-run"
    pkd_cli.ok(distill_args(tiny_teacher, sst2_dir, out, "--report-to", "mlflow"))
    assert list(cwd.iterdir()) == []  # no mlflow.db (nor mlruns/) here
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "pkd"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "pkd-run" and "loss" in run.data.metrics
