"""`pkd sweep` on tiny models: grid, resume, kill-and-resume, two workers, pruning, best.yaml,
holdout selection, and search spaces rejected before any trial."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from safetensors.torch import load_file

from pkd.errors import PkdError
from pkd.recipes import sweep as S

TINY = ["--task", "sst2", "--max-length", "16", "--batch-size", "8", "--allow-weak-teacher",
        "--method", "kd", "--student-layers", "2"]  # fmt: skip
SPACE4 = "lr: [3e-3, 1e-3]\ntemperature: [5, 10]\n"
SPACE6 = "lr: [3e-3, 1e-3, 5e-4]\ntemperature: [5, 10]\n"
PRUNE_SPACE = "lr: [3e-3, 1e-7]\ntemperature: [5, 10]\n"


def sweep_args(teacher, data, out, space: Path, *extra):
    return ["sweep", "--teacher", teacher, "--data-dir", data, "--output", out,
            "--space", space, *TINY, *extra]  # fmt: skip


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load(storage) -> optuna.Study:
    return optuna.load_study(study_name=S.STUDY_NAME, storage=S.open_storage(str(storage)))


def points(study, states=(TrialState.COMPLETE,)) -> list[tuple]:
    return sorted(
        (t.params["lr"], t.params["temperature"]) for t in study.trials if t.state in states
    )


@pytest.fixture(scope="module")
def grid4(tmp_path_factory, tiny_teacher, sst2_dir, pkd_cli):
    """One 4-point grid sweep (1 epoch per trial), shared by the tests that read it."""
    root = tmp_path_factory.mktemp("grid4")
    space = write(root / "space.yaml", SPACE4)
    out = root / "sweep"
    args = sweep_args(tiny_teacher, sst2_dir, out, space, "--epochs", "1", "--alpha", "0.5",
                      "--cache-dir", root / "cache")  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        pkd_cli.ok(args)
    return {"out": out, "args": args, "space": space}


@pytest.mark.slow
def test_grid_runs_every_point_once_with_its_parameters(grid4):
    out = grid4["out"]
    study = load(out / S.JOURNAL)
    assert len(study.trials) == 4
    assert points(study) == [(1e-3, 5), (1e-3, 10), (3e-3, 5), (3e-3, 10)]
    caches = []
    for t in study.trials:
        run = out / "trials" / f"trial-{t.number}"
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["train"]["lr"] == t.params["lr"]
        assert cfg["distill"]["temperature"] == t.params["temperature"]
        assert cfg["distill"]["alpha"] == 0.5 and cfg["distill"]["method"] == "kd"
        metrics = json.loads((run / "metrics.json").read_text())
        assert t.value == metrics["best"]["metrics"]["dev"]["accuracy"]
        caches.append(
            (t.number, metrics["teacher_cache"]["reused"], metrics["teacher_cache"]["path"])
        )
    # One teacher cache for all trials: the first trial builds it, no trial rebuilds it.
    assert [reused for _, reused, _ in sorted(caches)] == [False, True, True, True]
    assert len({path for _, _, path in caches}) == 1

    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["trial"]) for r in rows] == [0, 1, 2, 3]
    assert {(float(r["lr"]), int(r["temperature"])) for r in rows} == set(points(study))
    assert all(r["state"] == "complete" and r["epochs_run"] == "1" for r in rows)
    assert all(r["dev_by_epoch"] and float(r["wall_seconds"]) > 0 for r in rows)
    for r in rows:  # the KD term's gradient share, as the trial's run recorded it; no PT in KD
        run = out / "trials" / f"trial-{r['trial']}"
        shares = json.loads((run / "metrics.json").read_text())["gradient_shares"]
        assert float(r["share_kd"]) == pytest.approx(shares["kd"]) and r["share_pt"] == ""
    md = (out / "trials.md").read_text()
    assert "## Best configuration" in md and md.count("| complete |") == 4
    assert "| KD share % | PT share % |" in md
    for png in ("importance.png", "history.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["counts"] == {"complete": 4}
    assert summary["best"]["dev"] == max(t.value for t in study.trials)
    assert (out / "best" / "model" / "model.safetensors").is_file()
    assert summary["wall_seconds"]["cache_builds"] == 1
    card = (out / "best" / "model" / "README.md").read_text()
    assert f"The best trial ({summary['best']['trial']}: " in card
    assert f"pkd distill --config {out.name}/best.yaml\n" in card
    assert 'model="YOUR_NAME/best"' in card and str(out) not in card  # no local path


@pytest.mark.slow
def test_second_sweep_on_same_output_runs_nothing(grid4, pkd_cli):
    out = grid4["out"]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/metrics.json")}
    pkd_cli.ok(grid4["args"])
    assert len(load(out / S.JOURNAL).trials) == 4
    assert json.loads((out / "summary.json").read_text())["trials_run_here"] == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "trials").glob("*/metrics.json")} == stamps


@pytest.mark.slow
def test_other_settings_on_the_same_study_are_refused(grid4, tmp_path, pkd_cli):
    args = [str(a) for a in grid4["args"]]
    other = write(tmp_path / "other.yaml", "lr: [3e-3, 1e-3]\ntemperature: [5, 20]\n")
    changed_space = [other if a == str(grid4["space"]) else a for a in args]
    err = pkd_cli.error(changed_space)
    assert "was made with other settings (space.temperature: [5, 10] -> [5, 20])" in err
    assert "fixed.train.seed: 42 -> 7" in pkd_cli.error([*args, "--seed", "7"])
    assert len(load(grid4["out"] / S.JOURNAL).trials) == 4


@pytest.mark.slow
def test_best_yaml_reruns_the_best_trial(grid4, pkd_cli):
    out = grid4["out"]
    summary = json.loads((out / "summary.json").read_text())
    pkd_cli.ok(["distill", "--config", out / "best.yaml"])
    rerun = json.loads((out / "best-rerun" / "metrics.json").read_text())
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert rerun["best"]["metrics"] == best["best"]["metrics"]
    assert rerun["best"]["metrics"]["dev"]["accuracy"] == summary["best"]["dev"]
    assert rerun["teacher_cache"]["reused"] is True
    a = load_file(out / "best" / "model" / "model.safetensors")
    b = load_file(out / "best-rerun" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


KILLER = """
import os, signal, sys
import pkd.training.hooks as T
class DieInSecondTrial(T.LoopHooks):
    calls = 0
    def on_evaluate(self, state, metrics):
        self.calls += 1
        if self.calls == 2:  # trial 1 evaluated its epoch, metrics.json not yet written
            os.kill(os.getpid(), signal.SIGKILL)
from pkd.cli import main
with T.use_hooks(DieInSecondTrial()):
    main(sys.argv[1:])
"""


@pytest.mark.slow
def test_killed_sweep_resumes_and_runs_every_point_once(tiny_teacher, sst2_dir, tmp_path, pkd_cli):
    out = tmp_path / "sweep"
    args = [str(a) for a in sweep_args(tiny_teacher, sst2_dir, out, write(tmp_path / "s.yaml", SPACE4),
                                       "--epochs", "1", "--quiet")]  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", KILLER, *args], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    study = load(out / S.JOURNAL)
    assert [t.state for t in study.trials[:2]] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert not (out / "trials" / "trial-1" / "metrics.json").exists()

    pkd_cli.ok(args)
    study = load(out / S.JOURNAL)
    assert points(study) == [(1e-3, 5), (1e-3, 10), (3e-3, 5), (3e-3, 10)]  # each exactly once
    assert study.trials[1].state == TrialState.FAIL
    retries = [t for t in study.trials if t.user_attrs.get(S.RETRY_OF) == 1]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == study.trials[1].params
    assert (
        json.loads((out / "trials" / "trial-1" / "failed.json").read_text())["retry"]
        == retries[0].number
    )
    assert not (out / "trials" / "trial-1" / "metrics.json").exists()
    states = [r["state"] for r in csv.DictReader((out / "trials.csv").open())]
    assert sorted(states) == ["complete"] * 4 + ["fail (retried)"]


@pytest.mark.slow
def test_interrupted_trial_is_queued_again(tiny_teacher, sst2_dir, tmp_path, pkd_cli):
    import pkd.training.hooks as T

    class InterruptSecondTrial(T.LoopHooks):
        calls = 0

        def on_evaluate(self, state, metrics):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt

    out = tmp_path / "sweep"
    args = sweep_args(tiny_teacher, sst2_dir, out, write(tmp_path / "s.yaml", SPACE4),
                      "--epochs", "1", "--quiet")  # fmt: skip
    with T.use_hooks(InterruptSecondTrial()):
        assert pkd_cli(args).code == 130  # Ctrl-C
    study = load(out / S.JOURNAL)
    assert study.trials[1].state == TrialState.FAIL
    pkd_cli.ok(args)
    study = load(out / S.JOURNAL)
    assert points(study) == [(1e-3, 5), (1e-3, 10), (3e-3, 5), (3e-3, 10)]
    assert [t.user_attrs.get(S.RETRY_OF) for t in study.trials].count(1) == 1


SLOW = """
import sys, time
import pkd.training.hooks as T
class Slow(T.LoopHooks):
    def on_evaluate(self, state, metrics):
        time.sleep(1.0)  # a trial long enough for the other worker to join meanwhile
from pkd.cli import main
with T.use_hooks(Slow()):
    main(sys.argv[1:])
"""


@pytest.mark.slow
def test_two_processes_share_one_study(tiny_teacher, sst2_dir, tmp_path, pkd_cli):
    """A second process (this one) joins a study a first process (a subprocess) is running:
    the 6-point grid is finished by both, every point once, on one shared journal file."""
    space = write(tmp_path / "s.yaml", SPACE6)
    storage = tmp_path / "shared.journal"

    def args(worker):
        return sweep_args(tiny_teacher, sst2_dir, tmp_path / worker, space, "--epochs", "1",
                          "--storage", storage, "--quiet")  # fmt: skip

    first = subprocess.Popen(
        [sys.executable, "-c", SLOW, *map(str, args("worker-a"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:  # until it runs a trial
        try:
            if any(t.state == TrialState.RUNNING for t in load(storage).trials):
                break
        except Exception:  # the study does not exist yet
            pass
        time.sleep(0.2)
    pkd_cli.ok(args("worker-b"))
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]

    study = load(storage)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 6 and len(set(points(study))) == 6  # all six, none twice
    assert len([t for t in study.trials if not t.user_attrs.get(S.SURPLUS)]) == 6
    assert {t.user_attrs[S.PID] for t in done} == {first.pid, os.getpid()}  # both did some
    dirs = sorted(p.name for w in "ab" for p in (tmp_path / f"worker-{w}" / "trials").iterdir())
    assert dirs == sorted(f"trial-{t.number}" for t in done)


def median_pruned_sweep(pkd_cli, teacher, data, tmp_path, epochs: int) -> tuple[Path, optuna.Study]:
    """PRUNE_SPACE with the median pruner from the second trial on; alpha=0 (T irrelevant)."""
    out = tmp_path / "sweep"
    args = sweep_args(teacher, data, out, write(tmp_path / "s.yaml", PRUNE_SPACE),
                      "--epochs", epochs, "--alpha", "0", "--pruner", "median",
                      "--pruner-startup-trials", "1", "--quiet")  # fmt: skip
    pkd_cli.ok(args)
    return out, load(out / S.JOURNAL)


@pytest.mark.slow
def test_pruner_stops_the_trial_that_is_worst_after_epoch_one(
    tiny_teacher, sst2_dir, tmp_path, pkd_cli
):
    # lr=1e-7 barely moves the student (dev 43.75% after epoch 1), lr=3e-3 reaches 56.25%;
    # alpha=0 makes T irrelevant, so the two good trials tie and neither is pruned.
    out, study = median_pruned_sweep(pkd_cli, tiny_teacher, sst2_dir, tmp_path, epochs=2)
    good = [t for t in study.trials if t.params["lr"] == 3e-3]
    bad = [t for t in study.trials if t.params["lr"] == 1e-7]
    assert [t.state for t in good] == [TrialState.COMPLETE] * 2
    assert all(len(t.intermediate_values) == 2 for t in good)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(t in bad for t in pruned)
    for t in pruned:
        assert list(t.intermediate_values) == [1]  # stopped after its first epoch
        run = out / "trials" / f"trial-{t.number}"
        assert (run / "pruned.json").is_file() and not (run / "metrics.json").exists()
    rows = {int(r["trial"]): r for r in csv.DictReader((out / "trials.csv").open())}
    assert {rows[t.number]["state"] for t in pruned} == {"pruned"}
    assert (
        json.loads((out / "summary.json").read_text())["wall_seconds"]["saved_by_pruning_estimate"]
        > 0
    )


@pytest.mark.slow
def test_last_epoch_is_never_pruned(tiny_teacher, sst2_dir, tmp_path, pkd_cli):
    # As above with one epoch: the lr=1e-7 trials are as bad, but already trained.
    _, study = median_pruned_sweep(pkd_cli, tiny_teacher, sst2_dir, tmp_path, epochs=1)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert min(t.value for t in study.trials) < study.best_value


@pytest.mark.slow
def test_repeated_tpe_proposal_reuses_the_finished_trial(tiny_teacher, sst2_dir, tmp_path, pkd_cli):
    out = tmp_path / "sweep"
    one_point = write(tmp_path / "s.yaml", "lr: [3e-3]\ntemperature: [5]\n")
    args = sweep_args(tiny_teacher, sst2_dir, out, one_point, "--sampler", "tpe", "--trials", "3",
                      "--quiet")  # fmt: skip
    pkd_cli.ok(args)
    study = load(out / S.JOURNAL)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert len({t.value for t in study.trials}) == 1
    assert [t.user_attrs.get(S.DUPLICATE_OF) for t in study.trials] == [None, 0, 0]
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["trial-0"]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["duplicate_of"] for r in rows] == ["", "0", "0"]
    assert [float(r["wall_seconds"]) for r in rows][1:] == [0.0, 0.0]
    assert "complete (= trial 0)" in (out / "trials.md").read_text()


@pytest.mark.slow
def test_tpe_over_ranges_uses_its_budget_and_continues(tiny_teacher, sst2_dir, tmp_path, pkd_cli):
    out = tmp_path / "sweep"
    space = write(tmp_path / "s.yaml", "lr: {low: 1e-4, high: 5e-3, log: true}\nepochs: [1, 2]\n")
    args = sweep_args(tiny_teacher, sst2_dir, out, space, "--trials", "3", "--pruner", "hyperband",
                      "--quiet")  # fmt: skip
    pkd_cli.ok(args)
    study = load(out / S.JOURNAL)
    assert len(study.trials) == 3 and all(t.state.is_finished() for t in study.trials)
    assert all(
        1e-4 <= t.params["lr"] <= 5e-3 and t.params["epochs"] in (1, 2) for t in study.trials
    )
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["epochs"]) for r in rows] == [t.params["epochs"] for t in study.trials]
    pkd_cli.ok([*args[:-5], "--trials", "4", "--pruner", "hyperband", "--quiet"])  # one more
    assert len(load(out / S.JOURNAL).trials) == 4


@pytest.mark.slow
def test_holdout_selection_and_seeds_via_python_api(tiny_teacher, sst2_dir, tmp_path):
    out = tmp_path / "sweep"
    base = {
        "data": {"task": "sst2", "data_dir": str(sst2_dir), "max_length": 16,
                 "holdout_fraction": 0.25},
        "train": {"epochs": 1, "batch_size": 8},
        "distill": {"allow_weak_teacher": True},
    }  # fmt: skip
    result = S.sweep(str(tiny_teacher), str(out), base, method="kd", student_layers=2,
                     space={"lr": [3e-3, 1e-3]}, selection_split="holdout", seeds=[1, 2],
                     quiet=True)  # fmt: skip
    held = json.loads((out / "holdout.json").read_text())
    assert held["examples"] == 16 and held["train_examples"] == 48 and len(set(held["ids"])) == 16
    for run in (out / "trials").glob("trial-*"):
        m = json.loads((run / "metrics.json").read_text())
        assert m["data"]["train"]["examples"] == 48 and m["data"]["holdout"]["examples"] == 16
        assert set(m["best"]["metrics"]) == {"holdout", "dev"}
        selected = json.loads((run / "model" / "config.json").read_text())
        assert any(v.get("split") == "holdout" for v in selected.values() if isinstance(v, dict))
    best = result["best"]
    assert best["holdout"] is not None and best["dev"] is not None
    trial = json.loads((Path(best["run_dir"]) / "metrics.json").read_text())["best"]["metrics"]
    assert (
        best["holdout"] == trial["holdout"]["accuracy"] and best["dev"] == trial["dev"]["accuracy"]
    )
    seeds = result["seeds"]
    assert [r["seed"] for r in seeds["runs"]] == [1, 2]
    assert {"dev_mean", "dev_std", "holdout_mean", "holdout_std"} <= set(seeds)
    assert "holdout (%)" in (out / "trials.md").read_text()


BAD_SPACES = [
    ("gamma: [1, 2]\n", "s.yaml:1: unknown parameter 'gamma'"),
    ("lr: [1e-3]\nalpha: []\n", "s.yaml:2: alpha: empty list"),
    ("beta: [10, -1]\n", "s.yaml:1: beta -1 must be >= 0"),
    ("alpha: {low: 0.1, high: 1.5}\n", "s.yaml:1: alpha 1.5 must be in [0, 1]"),
    ("layer_map: [[1], [4]]\n", "s.yaml:1: layer_map [4] is impossible for a 4-layer teacher"),
    ("layer_map: [[1, 2]]\n", "layer_map [1,2] is impossible"),
    ("strategy: {low: 1, high: 2}\n", "s.yaml:1: strategy takes a list of choices"),
    ("lr: {low: 1e-5, high: 1e-3, log: true}\n", "--sampler grid: lr is a range"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SPACES)
def test_bad_search_space_is_rejected_before_any_trial(
    text, message, tiny_teacher, sst2_dir, tmp_path, pkd_cli
):
    out = tmp_path / "sweep"
    extra = ["--method", "pkd", "--sampler", "grid"]
    space = write(tmp_path / "s.yaml", text)
    assert message in pkd_cli.error(sweep_args(tiny_teacher, sst2_dir, out, space, *extra))
    assert not out.exists()  # no study, no trial


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--grid", "paper"], "--grid/--space: give exactly one"),
        (["--method", "kd"], "beta has no effect with --method kd"),
        (["--lr", "1e-3"], "--lr: also varied by the search space"),
        (["--strategy", "skip,diagonal"], "--strategy: 'diagonal' is not one of skip, last"),
    ],
)
def test_conflicting_options_are_rejected(
    extra, message, tiny_teacher, sst2_dir, tmp_path, pkd_cli
):
    space = write(tmp_path / "s.yaml", "lr: [1e-3, 2e-3]\nbeta: [10, 100]\n")
    args = sweep_args(tiny_teacher, sst2_dir, tmp_path / "o", space, "--method", "pkd", *extra)
    assert message in pkd_cli.error(args)


def test_paper_grid_is_exactly_the_authors(tiny_teacher, sst2_dir, tmp_path):
    base = {"data": {"task": "sst2", "data_dir": str(sst2_dir)}}
    plan = S.plan_sweep(S.SweepOptions(str(tiny_teacher), str(tmp_path / "o"), base, method="pkd",
                                       strategies=["skip", "last"], student_layers=2, grid="paper"))  # fmt: skip
    assert {n: p.choices for n, p in plan.space.items()} == {
        "strategy": ["skip", "last"],
        "temperature": [5, 10, 20],
        "alpha": [0.2, 0.5, 0.7],
        "beta": [10, 100, 500, 1000],
        "lr": [1e-5, 2e-5, 5e-5],
    }
    assert len(plan.points) == 216 == len({tuple(sorted(p.items())) for p in plan.points})
    assert (plan.task, plan.metric, plan.eval_split, plan.select) == (
        "sst2",
        "accuracy",
        "dev",
        "dev",
    )
    assert plan.trials == 216 and plan.max_epochs == 4 and plan.storage.endswith("study.journal")
    kd = S.plan_sweep(S.SweepOptions(str(tiny_teacher), str(tmp_path / "o"), base, method="kd",
                                     student_layers=2, grid="paper"))  # fmt: skip
    assert set(kd.space) == {"temperature", "alpha", "lr"} and len(kd.points) == 27


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"grid": "paper", "pruner": "x"}, "--pruner: 'x' is not one of none, median, hyperband"),
        ({"grid": "paper", "sampler": "x"}, "--sampler: 'x' is not one of grid, tpe"),
        ({"grid": "paper", "trials": 0}, "--trials: must be >= 1, got 0"),
        ({"grid": "paper", "pruner_startup_trials": -1}, "--pruner-startup-trials: must be >= 0"),
        (
            {"grid": "paper", "stale_after": 0},
            "--stale-after: must be a finite number of seconds > 0, got 0",
        ),
        # nan: no dead trial would ever be reclaimed
        ({"grid": "paper", "stale_after": float("nan")}, "--stale-after: must be a finite number"),
        ({"grid": "paper", "stale_after": float("inf")}, "--stale-after: must be a finite number"),
        ({"grid": "paper", "seeds": [1, 1]}, "--seeds: repeated values in [1, 1]"),
        ({"grid": "paper", "seeds": [-1]}, "--seeds: must be in 0..4294967295, got -1"),
        (
            {"grid": "paper", "method": "kd", "strategies": ["skip"]},
            "--strategy: only --method pkd",
        ),
        ({"grid": "paper", "strategies": ["skip", "skip"]}, "--strategy: repeated values"),
        ({"grid": "paper", "selection_split": "test"}, "--selection-split: 'test' is not one of"),
        ({"grid": "paper", "space": "s.yaml"}, "--grid/--space: give exactly one"),
        ({}, "--grid/--space: give exactly one"),
        ({"grid": "mine"}, "--grid: 'mine' is not a known grid; valid: paper"),
    ],
)
def test_sweep_options_are_checked_when_built(options, message, tmp_path):
    """SweepOptions checks what needs no file before any teacher, space or output is read."""
    with pytest.raises(PkdError) as e:
        S.SweepOptions("no-such-teacher", str(tmp_path / "o"), **options)
    assert str(e.value).startswith(message)
    assert not (tmp_path / "o").exists()


def test_only_study_and_worker_import_optuna():
    import ast

    importers = set()
    for path in Path(S.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n == "optuna" or n.startswith("optuna.") for n in names):
                importers.add(path.name)
    assert importers == {"study.py"}  # worker gets it from study.require_optuna


def test_stale_trial_of_another_machine_is_retried_once(tmp_path):
    """A RUNNING trial with an old heartbeat from another host: failed and re-queued once,
    even when two workers (two storage handles) look at it."""
    path = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="s", storage=S.open_storage(path), direction="maximize")
    dead, alive = study.ask(), study.ask()
    for trial, beat in ((dead, time.time() - 3600), (alive, time.time())):
        trial.suggest_float("lr", 1e-5, 1e-3)
        trial.set_user_attr(S.HOST, "another-machine")
        trial.set_user_attr(S.PID, 1)
        trial.set_user_attr(S.BEAT, beat)
    a = optuna.load_study(study_name="s", storage=S.open_storage(path))
    b = optuna.load_study(study_name="s", storage=S.open_storage(path))
    assert [f for f, _ in S.recover_stale(a, stale_after=600)] == [dead.number]
    assert S.recover_stale(b, stale_after=600) == []
    trials = load_any(path)
    assert trials[dead.number].state == TrialState.FAIL
    assert trials[alive.number].state == TrialState.RUNNING
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].user_attrs[S.RETRY_OF] == dead.number
    assert waiting[0].system_attrs["fixed_params"] == {"lr": dead.params["lr"]}


def load_any(path: str):
    return optuna.load_study(study_name="s", storage=S.open_storage(path)).trials


def test_missing_optuna_is_a_clear_error(monkeypatch, tmp_path, pkd_cli):
    monkeypatch.setitem(sys.modules, "optuna", None)
    err = pkd_cli.error(["sweep", "--teacher", "t", "--output", tmp_path / "o", "--grid", "paper"])
    assert "pip install optuna (or pip install 'pkd[sweep]')" in err
    with pytest.raises(PkdError, match="pip install optuna"):
        S.open_storage(str(tmp_path / "study.journal"))
    assert not (tmp_path / "o").exists()


def sweep_options(monkeypatch, pkd_cli, argv) -> S.SweepOptions:
    """The SweepOptions `pkd sweep ARGV` builds (the sweep itself is not run)."""
    got = []
    monkeypatch.setattr(S, "run_sweep", lambda o, **kw: got.append(o) or {"markdown": ""})
    pkd_cli.ok(argv)
    return got[0]


def test_sweep_options_reach_the_plan(tiny_teacher, sst2_dir, tmp_path, monkeypatch, pkd_cli):
    """--grid, --pruner, --storage, --selection-split, --holdout-fraction and --seeds as the
    plan of the study uses them."""
    argv = ["sweep", "--teacher", tiny_teacher, "--data-dir", sst2_dir, "--output",
            tmp_path / "o", *TINY, "--grid", "paper", "--pruner", "hyperband", "--storage",
            tmp_path / "s.journal", "--selection-split", "holdout", "--holdout-fraction", "0.2",
            "--seeds", "1,2"]  # fmt: skip
    plan = S.plan_sweep(sweep_options(monkeypatch, pkd_cli, argv))
    assert set(plan.space) == {"temperature", "alpha", "lr"} and len(plan.points) == 27  # kd
    assert (plan.pruner, plan.storage) == ("hyperband", str(tmp_path / "s.journal"))
    assert (plan.select, plan.base["data"]["holdout_fraction"]) == ("holdout", 0.2)
    assert plan.seeds == [1, 2]


def test_sweep_fixed_options_and_the_space(tiny_teacher, sst2_dir, tmp_path, monkeypatch, pkd_cli):
    """--space varies its parameters; --temperature fixes T for every trial; --lr is refused
    when the space varies lr."""
    space = write(tmp_path / "s.yaml", "lr: [1e-3, 2e-3]\n")
    argv = sweep_args(tiny_teacher, sst2_dir, tmp_path / "o", space, "--temperature", "5")
    plan = S.plan_sweep(sweep_options(monkeypatch, pkd_cli, argv))
    assert {n: p.choices for n, p in plan.space.items()} == {"lr": [1e-3, 2e-3]}
    assert plan.base["distill"]["temperature"] == 5
    assert sorted(plan.config(p, tmp_path / "t").train.lr for p in plan.points) == [1e-3, 2e-3]
    assert plan.config(plan.points[0], tmp_path / "t").distill.temperature == 5
    with pytest.raises(PkdError, match="--lr: also varied by the search space"):
        S.plan_sweep(sweep_options(monkeypatch, pkd_cli, [*argv, "--lr", "1e-4"]))
