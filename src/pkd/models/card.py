"""Model cards: the README.md of every model pkd saves, in the Hub's model-card format.

`write_model_card(model_dir, config, result, command)` writes `model_dir/README.md` with
`huggingface_hub`'s `ModelCard`/`ModelCardData`: YAML metadata the Hub reads (library,
pipeline tag, base model and datasets where they are Hub ids, tags, and the dev metrics as a
`model-index`) and a Markdown body a person reads: teacher, method, layer map, alpha, beta,
T, data, size, measured speed-up (where known), the exact command that re-runs the run,
how to load it from the Hub (a placeholder repository id), the license and language where
known, and the pkd version; no absolute local path. Only a run that trained and scored on
whole splits gets a `model-index`.

`pkd finetune` and `pkd distill` write it through `pkd.training.rundir.finish_run` from the run's
config.yaml and metrics.json (a `pkd.models.results.RunResult`; a new command passes its name
to `finish_run`: the card reads whatever of these facts the run records). `pkd compare` rewrites its students' cards with the
speed it measured, `pkd sweep` its best run's, and `pkd export` adds the ONNX files and
parity check to the card of the export (`export_card`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import yaml
from huggingface_hub import (
    EvalResult,
    ModelCard,
    ModelCardData,
    metadata_load,
    try_to_load_from_cache,
)

from pkd import __version__
from pkd.fsio import atomic_write
from pkd.models.results import Evaluation, RunResult
from pkd.tasks import ALIASES, TASKS, problem_head

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
REPO = "YOUR_NAME"  # the placeholder owner of the Hub repository the card is written for
DATASET_SOURCE = re.compile(r"dataset:(.*)\[([^\]]*)\]")  # a --dataset split: NAME[split]
PAPER = "https://arxiv.org/abs/1908.09355"  # Sun et al., EMNLP 2019
METHOD_NAMES = {"ft": "fine-tuning (FT)", "kd": "knowledge distillation (KD)"}


def is_hub_id(name: str | None) -> bool:
    """A Hub repository id (`org/name` or `name`), not a local path: what the Hub accepts as
    `base_model` or `datasets` metadata."""
    if not name or name.startswith(("/", ".", "~", "<")) or Path(name).exists():
        return False
    return name.count("/") <= 1


def task_spec(config: dict, result: RunResult):
    """The registered task (GLUE, RACE) of a run, or None for custom data."""
    name = str(result.task or (config.get("data") or {}).get("task") or "").lower()
    return TASKS.get(ALIASES.get(name, name))


def shown_name(name) -> str | None:
    """How a card names a model, run or file: a Hub id as it is, a local path by its last part
    (`run/model` for a run's model/), never as an absolute path on this machine."""
    if name is None or is_hub_id(str(name)) or str(name).startswith("<"):
        return None if name is None else str(name)
    path = Path(str(name))
    return f"{path.parent.name}/{path.name}" if path.name == "model" else path.name


def shown_source(source) -> str | None:
    """A split's source as a card shows it: `dataset:NAME[split]` or a file, by `shown_name`."""
    found = DATASET_SOURCE.fullmatch(str(source or ""))
    if found:
        return f"dataset:{shown_name(found.group(1))}[{found.group(2)}]"
    return shown_name(source)


def real_split(result: RunResult, split: str, spec) -> str:
    """The name the data itself gives pkd's `split`: the Hub's for a registered task, the
    DatasetDict's (`dataset:NAME[validation]`) for custom data, else pkd's own."""
    if spec is not None and spec.hf_path:
        return spec.hf_splits.get(split, split)
    source = str((result.data.get(split) or {}).get("source", ""))
    found = DATASET_SOURCE.fullmatch(source)
    return found.group(2) if found else split


def dataset_ids(config: dict, result: RunResult) -> tuple[str, str, str | None]:
    """(dataset id, pretty name, load_dataset config) of a run's data, for the model-index."""
    spec = task_spec(config, result)
    data = config.get("data") or {}
    if spec is not None and spec.hf_path:
        return spec.hf_path, f"{spec.hf_path.split('/')[-1].upper()} {spec.name}", spec.hf_name
    if is_hub_id(data.get("dataset")):
        return data["dataset"], data["dataset"], data.get("dataset_config")
    train = str((result.data.get("train") or {}).get("source", "custom data"))
    found = DATASET_SOURCE.fullmatch(train)
    return "custom", shown_name(found.group(1) if found else train) or "custom data", None


def unclaimed(config: dict) -> str | None:
    """Why a run's scores are no result on the data's official splits (a model-index entry),
    or None: it trained on part of the training set, or scored part of a split."""
    data = config.get("data") or {}
    if data.get("max_train_samples"):
        n = data["max_train_samples"]
        return f"trained on the first {n} training examples only (`--max-train-samples {n}`)"
    if data.get("max_eval_samples"):
        n = data["max_eval_samples"]
        return f"scored on the first {n} examples of each split only (`--max-eval-samples {n}`)"
    if data.get("holdout_fraction"):
        f = data["holdout_fraction"]
        return f"trained on part of the training set (`--holdout-fraction {f}`)"
    return None


def eval_results(config: dict, result: RunResult) -> list[EvalResult]:
    """The best evaluation's metrics, one EvalResult per split and metric, named as the data
    names them; none when the run saw only part of the data (`unclaimed`), and for a
    registered task none on a split that is not the task's own (a held-out part of train)."""
    best = result.best.metrics if result.best else {}
    spec = task_spec(config, result)
    if unclaimed(config):
        return []
    dataset, pretty, hf_config = dataset_ids(config, result)
    task_type = problem_head(getattr(spec, "problem_type", None)).card_task
    results = []
    for split, values in best.items():
        if spec is not None and spec.hf_path and split not in spec.hf_splits:
            continue
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                results.append(
                    EvalResult(
                        task_type=task_type,
                        dataset_type=dataset,
                        dataset_name=pretty,
                        dataset_config=hf_config,
                        dataset_split=real_split(result, split, spec),
                        metric_type=name,
                        metric_value=round(float(value), 6),
                        metric_name=f"{name} ({split})",
                    )
                )
    return results


def known_license(names: list) -> str | None:
    """The license the card of the first of `names` (the models this one derives from) that
    declares one gives, read without the network: a local model directory's README.md, or a
    Hub model's card already in the local cache. None where none is known."""
    for name in names:
        if not name:
            continue
        try:  # a card that cannot be read or parsed says nothing: never fail a finished run
            path = Path(str(name)) / CARD_FILE
            if not path.is_file() and is_hub_id(str(name)):
                cached = try_to_load_from_cache(str(name), CARD_FILE)
                path = Path(cached) if isinstance(cached, str) else path
            found = (metadata_load(path) or {}).get("license") if path.is_file() else None
        except (OSError, ValueError, yaml.YAMLError) as e:  # HFValidationError is a ValueError
            logger.debug("no license from %s's card: %s", name, e)
            continue
        if found:
            return str(found)
    return None


def card_data(name: str, config: dict, result: RunResult, command: str) -> ModelCardData:
    """The card's YAML metadata."""
    spec = task_spec(config, result)
    base = {"distill": result.student_init, "pretrain": config.get("teacher")}.get(
        command, config.get("model")
    )
    dataset, _, _ = dataset_ids(config, result)
    tags = ["pkd", command]
    if command == "distill":
        tags += ["knowledge-distillation", str(result.method or "")]
    if command == "pretrain":  # a general student: no task head, no task metrics
        tags += ["knowledge-distillation", "general-distillation"]
    results = eval_results(config, result) if command != "pretrain" else []
    head = problem_head(getattr(spec, "problem_type", None))  # custom data: a sequence head
    pipeline_tag = "feature-extraction" if command == "pretrain" else head.pipeline_tag
    parents = [config.get("teacher"), base, config.get("model")]
    return ModelCardData(
        model_name=name,
        language=["en"] if spec is not None and spec.hf_path else None,  # GLUE, RACE
        license=known_license(parents),
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        base_model=base if is_hub_id(base) else None,
        datasets=[dataset] if is_hub_id(dataset) and dataset != "custom" else None,
        tags=[t for t in tags if t],
        eval_results=results or None,
    )


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value in (None, "", []) else str(value)


def facts(config: dict, result: RunResult, model_dir: Path, command: str, speed, shown: Path):
    """(label, value) rows of the card's summary table."""
    d = config.get("distill") or {}
    general = command == "pretrain"  # no task, no head, no pooling
    rows = [] if general else [("task", result.task)]
    rows.append(("command", f"pkd {command}"))
    if command == "distill":
        method, teacher = result.method, config.get("teacher")
        weights = (d.get("alpha"), d.get("beta"), d.get("temperature"))
        init = f"`{shown_name(result.student_init)}` (first M layers)"
        rows += [
            *distillation_rows(method, d.get("strategy"), teacher, result.layer_map, *weights),
            ("student initialised from", init),
            ("student layers", result.student_layers),
            ("KD / patient loss forms", f"{d.get('kd_loss')} / {d.get('pt_loss')}"),
        ]
    elif command == "pretrain":
        student = result.student
        shape = f"{student.get('layers')} layers × hidden {student.get('hidden_size')}"
        pairs = result.layer_map
        rows += [
            ("teacher (pre-trained)", f"`{shown_name(config.get('teacher'))}`"),
            ("student initialised from", shown_name(student.get("init"))),
            ("student shape", f"{shape}, {student.get('heads')} heads"),
            ("layer map (teacher → student)", ", ".join(f"{t} → {s}" for t, s in pairs)),
            ("patient loss on", f"{student.get('pt_tokens')} tokens"),
        ]
    elif config.get("model"):
        rows.append(("base model", f"`{shown_name(config['model'])}`"))
    if not general:
        rows.append(("pooling", result.pooling))
    rows.append(("size", size(result, model_dir)))
    rows.append(("speed-up over the teacher", speedup(speed, config, shown, command)))
    return [(k, fmt(v)) for k, v in rows]


METHODS = {**METHOD_NAMES, "pkd": "patient knowledge distillation (PKD-{strategy})"}


def distillation_rows(method, strategy, teacher, pairs, alpha, beta, temperature) -> list:
    """The (label, value) rows that say how a student was distilled: method, teacher, layer
    map (teacher → student), α, β, T; `pkd distill`'s card and the Trainer's have them."""
    return [
        ("method", METHODS.get(method, method).format(strategy=strategy)),
        ("teacher", f"`{shown_name(teacher)}`"),
        ("layer map (teacher → student)", ", ".join(f"{t} → {s}" for t, s in pairs or [])),
        ("α, β, T", f"{fmt(alpha)}, {fmt(beta)}, {fmt(temperature)}"),
    ]


def summary_table(rows: list) -> list[str]:
    """(label, value) rows as the card's two-column Markdown table."""
    return ["| | |", "|---|---|", *(f"| {k} | {fmt(v)} |" for k, v in rows)]


def size(result: RunResult, model_dir: Path) -> str:
    """Parameters and the weights' size on disk."""
    total = result.parameters
    weights = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    shown = f"{total:,} parameters ({total / 1e6:.1f}M)" if total else "—"
    return f"{shown}, {weights / 2**20:.1f} MB of weights" if weights else shown


def speedup(speed: dict | None, config: dict, model_dir: Path, command: str) -> str:
    """The measured speed-up (`pkd compare`), or how to measure it."""
    if speed and speed.get("speedup") is not None:
        return (
            f"{speed['speedup']:.2f}× ({speed.get('throughput', 0):.0f} examples/s, "
            f"p50 {speed.get('latency_ms_p50', 0):.1f} ms; {speed.get('setting', '')})"
        )
    if command != "distill":
        return "—"
    teacher, model = shown_name(config.get("teacher")), shown_name(model_dir)
    return f"not measured here (`pkd benchmark --models {teacher} {model}`)"


def results_table(config: dict, result: RunResult) -> list[str]:
    """The best evaluation per split, with the majority baseline and the teacher's score,
    and why the scores are not in the metadata when they are not (`unclaimed`)."""
    best = result.best or Evaluation(None, None, {})
    baseline, teacher = result.majority_baseline, result.teacher_metrics
    lines = [
        f"Best evaluation (step {best.step}, epoch {best.epoch}):",
        "",
        "| split | metric | value | majority baseline | teacher |",
        "|---|---|---|---|---|",
    ]
    for split, values in best.metrics.items():
        for i, (name, value) in enumerate(values.items()):
            base = fmt(baseline.get(split)) if i == 0 else ""
            t = fmt((teacher.get(split) or {}).get(name))
            lines.append(f"| {split} | {name} | {fmt(value)} | {base} | {t} |")
    reason = unclaimed(config)
    if reason and best.metrics:
        lines += ["", f"Not in this card's metadata (`model-index`): {reason}."]
    return lines


def data_table(result: RunResult) -> list[str]:
    lines = ["| split | source | examples | sha256 |", "|---|---|---|---|"]
    for split, d in result.data.items():
        sha = str(d.get("sha256", ""))[:16]
        lines.append(
            f"| {split} | `{shown_source(d.get('source'))}` | {d.get('examples')} | `{sha}…` |"
        )
    return lines


def rerun_command(command: str, run_dir: Path, rerun: str | None) -> str:
    """The command that re-runs the run from its recorded config (every resolved option), run
    from the directory that holds the run."""
    name = run_dir.name
    return rerun or f"pkd {command} --config {name}/config.yaml --output {name}-rerun"


def body(name, config, result, model_dir, command, speed, note, rerun, shown) -> str:
    """The card's Markdown: summary, results, data, re-run, use, provenance; `shown`:
    the model's path as the text names it."""
    meta = config.get("meta") or {}
    version = meta.get("pkd") or __version__
    what = {
        "distill": "A student distilled",
        "pretrain": "A general-purpose student distilled on unlabelled text (no task head)",
    }.get(command, "A model trained")
    lines = [
        f"# {name}",
        "",
        f"{what} with pkd {version} (`pkd {command}`): Patient Knowledge Distillation for "
        f"BERT-family models (Sun et al., EMNLP 2019, {PAPER}).",
        *(["", note] if note else []),
        "",
        *summary_table(facts(config, result, model_dir, command, speed, shown)),
        "",
        "## Results",
        "",
        *results_table(config, result),
        "",
        "## Data",
        "",
        *data_table(result),
        "",
        "## Re-run",
        "",
        f"Every resolved option is in the run's `config.yaml` (paths as they were given); from "
        f"the directory that holds the run `{shown.parent.name}/`:",
        "",
        "```bash",
        rerun_command(command, shown.parent, rerun),
        "```",
    ]
    repo = f"{REPO}/{name}"
    embedding = (Path(model_dir) / "modules.json").is_file()  # `pkd.models.sentence_transformers`
    use = general_usage(repo, embedding) if command == "pretrain" else usage(repo, result)
    return "\n".join([*lines, "", *use, "", *provenance(meta, version)])


def usage(repo: str, result: RunResult) -> list[str]:
    """How the published model is loaded (`repo`: its Hub id, a placeholder owner)."""
    mean = result.pooling == "mean"
    load = (
        "import pkd  # registers mean-pooled heads (or pass trust_remote_code=True)\n"
        if mean
        else ""
    )
    return [
        "## Use",
        "",
        "```python",
        f"{load}from transformers import pipeline",
        "",
        f'classifier = pipeline("text-classification", model="{repo}")',
        "```",
    ]


def general_usage(repo: str, embedding: bool = False) -> list[str]:
    """How a `pkd pretrain` student is used: as an embedding model (`embedding`: its model
    directory is a sentence-transformers one), as an encoder, or as a task student's init
    (`repo`: its Hub id, a placeholder owner)."""
    sentence = [
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'embeddings = SentenceTransformer("{repo}").encode(["A sentence to embed."])',
        "```",
        "",
    ]
    return [
        "## Use",
        "",
        *(sentence if embedding else []),
        "```python",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'encoder = AutoModel.from_pretrained("{repo}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
        "```",
        "",
        "As the initialisation of a task student (`distill`, `compare`, `sweep`):",
        "",
        "```bash",
        f"pkd distill --student-init {repo} --teacher TEACHER --task TASK ...",
        "```",
    ]


def provenance(meta: dict, version: str) -> list[str]:
    versions = ", ".join(
        f"{k} {meta[k]}" for k in ("transformers", "torch", "accelerate") if meta.get(k)
    )
    sha = f", git {meta['git_sha'][:12]}" if meta.get("git_sha") else ""
    return [f"Written by pkd {version}{sha}; {versions or 'versions not recorded'}."]


def model_card(
    model_dir: Path,
    config: dict,
    result: RunResult,
    command: str,
    speed: dict | None = None,
    note: str | None = None,
    rerun: str | None = None,
    shown: Path | None = None,
) -> ModelCard:
    """The model card of a run's model (see the module docstring).

    Args:
        model_dir: the run's model/ directory (its weights give the size on disk).
        config, result: the run's config.yaml and metrics.json contents.
        command: the pkd command that trained it (finetune, distill, ...).
        speed: measured speed against the teacher (speedup, throughput, latency_ms_p50,
            setting), where known.
        note: a line under the title (e.g. why this run is the best one).
        rerun: the re-run command, when not `pkd COMMAND --config RUN/config.yaml`.
        shown: where the model will be read from, when it is written elsewhere first (a
            directory staged aside, `pkd.fsio.staged_dir`); default `model_dir`.
    """
    model_dir = Path(model_dir)
    shown = Path(shown or model_dir)
    name = shown.parent.name if shown.name == "model" else shown.name
    data = card_data(name, config, result, command)
    text = body(name, config, result, model_dir, command, speed, note, rerun, shown)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}\n")


def write_model_card(model_dir: Path, config: dict, result: RunResult, command: str, **kw) -> Path:
    """Write `model_dir/README.md` (atomically), and log how to publish it (the card itself
    is written for the Hub, so it holds no upload instructions); keywords as `model_card`'s."""
    path = Path(model_dir) / CARD_FILE
    card = model_card(model_dir, config, result, command, **kw)
    atomic_write(path, str(card))
    shown = Path(kw.get("shown") or model_dir)
    logger.info(
        "model card: %s; publish with `hf upload %s/%s %s .`",
        shown / CARD_FILE,
        REPO,
        card.data.model_name,
        shown,
    )
    return path


def export_card(source_dir: Path, export_dir: Path, files: list[str], report: dict) -> ModelCard:
    """The card of a `pkd export` directory: the source model's card (if it has one), tagged
    `onnx`, with a section on its ONNX `files` and the parity check against PyTorch."""
    source = Path(source_dir) / CARD_FILE
    card = ModelCard(source.read_text()) if source.is_file() else ModelCard("---\n---\n")
    card.data.tags = sorted({*(card.data.tags or []), "onnx", "pkd"})
    card.data.library_name = "onnx"
    fp32, int8 = report.get("fp32") or {}, report.get("int8")
    lines = [
        "",
        "## ONNX export",
        "",
        f"`pkd export` of `{shown_name(source_dir)}` (opset {report.get('opset')}): "
        + ", ".join(f"`{f}`" for f in files)
        + "; run it with onnxruntime and the tokenizer here, e.g. "
        f"`pkd predict --model {shown_name(export_dir)} ...`.",
        "",
        "| parity with PyTorch | value |",
        "|---|---|",
        f"| texts | {report.get('samples')} from `{shown_source(report.get('source'))}` |",
        f"| fp32 max abs. logit difference | {fmt(fp32.get('max_abs_diff'))} |",
    ]
    if int8:
        lines += [
            f"| int8 label agreement | {fmt(int8.get('agreement'))} |",
            f"| int8 agreement beyond near-ties | {fmt(int8.get('agreement_beyond_ties'))} |",
        ]
    lines += ["", f"Full report: `parity.json` (versions: {json.dumps(report.get('versions'))})."]
    card.text = card.text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    return card
