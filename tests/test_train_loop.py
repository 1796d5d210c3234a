"""The one loop on tiny random BERTs: fine-tuning learns, distillation logs its terms."""

import json

import pytest
import torch
from conftest import sentiment_rows

import pkd.training.hooks as T
from pkd.api import distill, finetune
from pkd.config.runs import DistillRunConfig, FinetuneRunConfig
from pkd.config.sections import DataConfig, DistillConfig, TrainConfig
from pkd.training.checkpoints import LoopState


def _finetune(tiny_bert, sst2_dir, out, **train):
    cfg = FinetuneRunConfig(
        model=str(tiny_bert),
        output=str(out),
        data=DataConfig(task="sst2", data_dir=str(sst2_dir), max_length=16),
        train=TrainConfig(
            epochs=train.pop("epochs", 3), lr=3e-3, batch_size=8, quiet=True, **train
        ),
    )
    return finetune(cfg)


def test_finetune_learns_toy_sentiment(tiny_bert, sst2_dir, tmp_path):
    m = _finetune(tiny_bert, sst2_dir, tmp_path / "run", epochs=8)
    assert m["best"]["metrics"]["dev"]["accuracy"] >= 0.8
    for name in (
        "config.yaml",
        "metrics.json",
        "log.jsonl",
        "model/config.json",
        "model/model.safetensors",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("ce" in r and "lr" in r and "step" in r for r in rows)
    assert any("dev/accuracy" in r for r in rows)
    assert not (tmp_path / "run" / "checkpoints").exists()  # removed after a finished run


def test_distill_methods_log_their_terms(tiny_bert, sst2_dir, tmp_path):
    _finetune(tiny_bert, sst2_dir, tmp_path / "teacher", epochs=8)
    expected = {"ft": {"ce"}, "kd": {"ce", "kd"}, "pkd": {"ce", "kd", "pt"}}
    for method, terms in expected.items():
        cfg = DistillRunConfig(
            teacher=str(tmp_path / "teacher" / "model"),
            output=str(tmp_path / method),
            data=DataConfig(task="sst2", data_dir=str(sst2_dir), max_length=16),
            train=TrainConfig(epochs=1, lr=1e-3, batch_size=8, quiet=True),
            distill=DistillConfig(method=method, student_layers=2),
        )
        m = distill(cfg)
        rows = [
            json.loads(line) for line in (tmp_path / method / "log.jsonl").read_text().splitlines()
        ]
        logged = {k for r in rows for k in r if k in ("ce", "kd", "pt")}
        assert logged == terms, method
        assert m["layer_map"] == ([[2, 1]] if method == "pkd" else [])


# ---------------------------------------------------------------------------------------------
# loss_terms by value: student layer j against teacher layer I(j)


def hand_terms(student, teacher, batch, pairs, temperature):
    """CE, KD (kl form, x T^2) and PT (normalised [CLS], mean form) computed from the two
    models' own outputs, with the pairs read as (teacher layer, student layer)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "example_index")}
    with torch.no_grad():
        s = student(**inputs, output_hidden_states=True)
        t = teacher(**inputs, output_hidden_states=True)
    zs, zt = s.logits.double(), t.logits.double()
    b, c = zs.shape
    log_p = zs - zs.logsumexp(-1, keepdim=True)
    ce = -log_p[torch.arange(b), batch["labels"]].mean()
    log_q = zs / temperature - (zs / temperature).logsumexp(-1, keepdim=True)
    log_pt = zt / temperature - (zt / temperature).logsumexp(-1, keepdim=True)
    kd = (log_pt.exp() * (log_pt - log_q)).sum() / (b * c) * temperature**2
    sq, n = 0.0, 0
    for t_layer, s_layer in pairs:
        u = s.hidden_states[s_layer][:, 0].double()  # (B, H): [CLS] after student layer j
        v = t.hidden_states[t_layer][:, 0].double()  # and after teacher layer I(j)
        u, v = u / u.norm(dim=-1, keepdim=True), v / v.norm(dim=-1, keepdim=True)
        sq += (u - v).pow(2).sum().item()
        n += u.numel()
    return {"ce": ce.item(), "kd": kd.item(), "pt": sq / n}


def test_loss_terms_pair_student_layer_j_with_teacher_layer_i_j(tiny_bert, tiny_teacher, sst2_dir):
    """One batch: loss_terms (online and cached teacher) equals CE, KD and PT computed by hand,
    for the map 1 -> 1, 4 -> 2 of a 4-layer teacher and a 3-layer student."""
    from pkd.data.loading import collator, encode, load_split
    from pkd.models.encoders import load_finetuned, load_tokenizer
    from pkd.models.students import build_student
    from pkd.objectives.cache import build_or_load
    from pkd.objectives.objective import Objective, cached_teacher, loss_terms, online_teacher
    from pkd.tasks import get_task

    teacher = load_finetuned(str(tiny_teacher)).eval()
    student = build_student(str(tiny_bert), 3, teacher, "classification").eval()
    # The student starts as the teacher's first 3 layers, neighbouring layers' [CLS] states are
    # almost parallel, and the head is untrained: move layers 2.. of both models apart and
    # sharpen the teacher's soft labels. Teacher layer 1 still equals student layer 1 (the pair
    # 1 -> 1 adds 0), and layers 2 and up of the two models differ.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in [
            *teacher.bert.encoder.layer[1:].parameters(),
            *student.bert.encoder.layer[1:].parameters(),
        ]:
            p.add_(torch.randn_like(p))
        teacher.classifier.weight.mul_(100.0)
    tok = load_tokenizer(str(tiny_teacher))
    data = encode(load_split(get_task("sst2"), "train", str(sst2_dir)), tok, 16, {"0": 0, "1": 1})
    collate = collator(tok)
    batch = collate([data[i] for i in (3, 0, 9, 14, 21, 40, 41, 63)])
    pairs = [(1, 1), (4, 2)]
    expected = hand_terms(student, teacher, batch, pairs, temperature=2.0)
    cache = build_or_load(teacher, data, collate, "sst2", {}, show_progress=False)
    for signals, tol in ((online_teacher(teacher), 1e-5), (cached_teacher(cache), 2e-3)):
        objective = Objective(("ce", "kd", "pt"), 0.3, 7.0, 2.0, pairs=pairs, teacher=signals)
        with torch.no_grad():
            got = {k: v.item() for k, v in loss_terms(student, batch, objective, False).items()}
        assert got == pytest.approx(expected, rel=tol), (got, expected)
    # the map matters: 1 -> 1 alone adds nothing; the student's layers swapped, or either
    # model's layers off by one, give other values
    assert hand_terms(student, teacher, batch, [(1, 1)], 2.0)["pt"] < 1e-12
    for other in ([(1, 2), (4, 1)], [(0, 1), (3, 2)], [(1, 2), (4, 3)]):
        pt = hand_terms(student, teacher, batch, other, temperature=2.0)["pt"]
        assert abs(pt - expected["pt"]) > 0.1 * expected["pt"], other


# ---------------------------------------------------------------------------------------------
# Hooks: how a caller (a test's fault injection) reaches the loop


class Recorder(T.LoopHooks):
    """Every hook call, in order, with what the loop passed."""

    def __init__(self):
        self.calls = []

    def on_loss(self, step, terms):
        self.calls.append(("loss", step, sorted(terms)))

    def on_evaluate(self, state, metrics):
        self.calls.append(("evaluate", state.step, state.epoch, metrics))

    def on_checkpoint(self, state, path):
        # the checkpoint is complete and holds this state
        self.calls.append(("checkpoint", state.step, path.name, LoopState.load(path) == state))


def test_hooks_see_each_micro_batch_evaluation_and_checkpoint(tiny_bert, sst2_dir, tmp_path):
    """64 examples, batch 8 in 2 micro-batches of 4, 2 epochs: 16 steps of 2 micro-batches; a
    checkpoint every 5 steps and after each epoch's evaluation. After the block, no calls."""
    rec = Recorder()
    with T.use_hooks(rec):
        m = _finetune(tiny_bert, sst2_dir, tmp_path / "run", epochs=2,
                      gradient_accumulation_steps=2, save_steps=5)  # fmt: skip
    evaluated = iter(h["metrics"] for h in m["history"])
    expected = []
    for step in range(1, 17):
        expected += [("loss", step, ["ce"])] * 2
        if step % 5 == 0:
            expected.append(("checkpoint", step, f"step-{step}", True))
        if step % 8 == 0:
            expected.append(("evaluate", step, step // 8, next(evaluated)))
            expected.append(("checkpoint", step, f"step-{step}", True))
    assert rec.calls == expected
    _finetune(tiny_bert, sst2_dir, tmp_path / "after", epochs=1)
    assert len(rec.calls) == len(expected)


def test_the_optimizer_is_fused_adamw_with_the_default_sums():
    """AdamW runs torch's fused kernel (on the CPU a quarter of the per-tensor loop's time for a
    student's embeddings) and takes the same steps as the default implementation; biases and
    LayerNorm weights still have no weight decay."""
    from pkd.training.accelerator import optimizer_and_schedule

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.LayerNorm(8))

    cfg = TrainConfig(lr=1e-2, warmup_ratio=0.0, weight_decay=0.1)
    fused, plain = model(), model()
    opt, schedule = optimizer_and_schedule(fused, cfg, total_steps=3)
    assert opt.defaults["fused"] is True
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 1]  # embedding, LN weight | bias
    ref = torch.optim.AdamW(
        [{"params": [plain[0].weight, plain[1].weight], "weight_decay": 0.1},
         {"params": [plain[1].bias], "weight_decay": 0.0}],
        lr=1e-2, fused=False,
    )  # fmt: skip
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    for _ in range(3):
        for net, o in ((fused, opt), (plain, ref)):
            net(ids).pow(2).mean().backward()
            o.step()
            o.zero_grad()
        schedule.step()
        for g in ref.param_groups:
            g["lr"] = schedule.get_last_lr()[0]
    for a, b in zip(fused.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]),
        ("cosine", [0.0, 0.5, 1.0, 0.962, 0.854, 0.691, 0.5, 0.309, 0.146, 0.038]),
    ],
)
def test_lr_schedule_warms_up_then_follows_the_named_schedule(schedule, expected):
    """--warmup-ratio 0.2 of 10 steps: two steps up from 0, then constant (the default: a
    short run keeps its summed lr), linear decay to 0 (the paper's) or a cosine."""
    from pkd.training.accelerator import optimizer_and_schedule

    cfg = TrainConfig(lr=1.0, warmup_ratio=0.2, lr_schedule=schedule)
    opt, sched = optimizer_and_schedule(torch.nn.Linear(2, 2), cfg, total_steps=10)
    got = []
    for _ in range(10):
        got.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert got == pytest.approx(expected, abs=1e-3)
    assert TrainConfig().lr_schedule == "linear"  # finetune, pretrain; distill: constant


def test_unknown_lr_schedule_is_a_one_line_error(pkd_cli):
    msg = pkd_cli.error(["distill", "--teacher", "t", "--task", "sst2", "--lr-schedule", "step"])
    assert msg == "--lr-schedule: 'step' is not one of constant, linear, cosine"


def test_scoring_reads_longest_first_and_answers_in_the_split_order(tiny_teacher, tmp_path):
    """Evaluation batches come longest first (little padding); the logits come back in the
    split's order, equal to those of a loader in file order."""
    from accelerate import Accelerator
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pkd.data.loading import collator, encode, eval_loader, load_splits
    from pkd.training.evaluation import predict_logits

    rows = sentiment_rows(20)
    lines = [" ".join([text] * (1 + i % 4)) + f"\t{label}" for i, (text, label) in enumerate(rows)]
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(lines) + "\n")
    data = DataConfig(task="sst2", data_dir=str(tmp_path), max_length=32)
    _, splits = load_splits(data, ["dev"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher)
    dev = encode(splits["dev"], tokenizer, 32, {"0": 0, "1": 1}, False)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    acc, collate = Accelerator(cpu=True), collator(tokenizer)
    sorted_loader = eval_loader(dev, 8, collate)
    firsts = [b["input_ids"].shape[1] for b in sorted_loader]
    assert firsts == sorted(firsts, reverse=True) and len(set(dev.lengths())) > 1
    plain = torch.utils.data.DataLoader(dev, batch_size=8, collate_fn=collate)
    want, gold = predict_logits(model, acc.prepare(plain), acc)
    got, labels = predict_logits(model, acc.prepare(sorted_loader), acc)
    assert (labels == gold).all() and list(gold) == [float(x) for x in dev.labels]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)


def test_gradient_shares_are_each_weighted_terms_gradient_norm_over_their_sum():
    """share_k = |grad(w_k L_k)| / sum_j |grad(w_j L_j)| over all the student's parameters;
    a term with weight 0 has share 0."""
    from pkd.objectives.objective import gradient_shares

    class Weights:
        def weights(self):
            return {"ce": 1.0, "kd": 0.5, "pt": 0.0}

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    x = torch.randn(5, 3)
    out = model(x)
    terms = {"ce": out.pow(2).mean(), "kd": out.sum(), "pt": out.abs().mean()}
    got = gradient_shares(model, terms, Weights())

    def norm(loss):
        grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
        return float(torch.cat([g.flatten() for g in grads]).norm())

    ce, kd = norm(terms["ce"]), norm(0.5 * terms["kd"])
    assert got == pytest.approx({"share_ce": ce / (ce + kd), "share_kd": kd / (ce + kd),
                                 "share_pt": 0.0})  # fmt: skip
    assert sum(got.values()) == pytest.approx(1.0)


def test_gradient_shares_are_measured_on_logged_steps_one_two_four_and_the_last():
    """One extra backward per term: on logging intervals 1, 2, 4, 8, ... and the last step."""
    from pkd.training.loop import measures_shares

    measured = [s for s in range(1, 1001) if measures_shares(s, 20, 1000)]
    assert measured == [20, 40, 80, 160, 320, 640, 1000]
    assert [s for s in range(1, 126) if measures_shares(s, 20, 125)] == [20, 40, 80, 125]
    assert [s for s in range(1, 9) if measures_shares(s, 1, 8)] == [1, 2, 4, 8]
