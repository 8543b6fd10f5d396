"""run_glue_no_trainer.py flags whose effect is only visible in what a run builds or writes: --lora_modules,
--vilora_criterion, --with_tracking, AdamW's --weight_decay groups and the reduce_lr_on_plateau direction.

Every test drives the script through main(argv) on a tiny DeBERTa-v2 and tiny RTE data (CPU, fixed seeds); spies
sit on library classes (torch's AdamW, evaluate's metric loader), not on the script's internals.
"""
from __future__ import annotations

import json
import types

import pytest
import torch
from safetensors.torch import load_file

from _run_glue_utils import have_adapters, make_tiny_model, read_log, read_results, write_tiny_glue

pytestmark = pytest.mark.skipif(not have_adapters(), reason="peft/ivon packages not available yet")
import run_glue_no_trainer as rg  # noqa: E402
LAYERS = (0, 1)
ADALORA = ["--adalora_init_r", "3", "--adalora_target_r", "2", "--adalora_tinit", "2", "--adalora_tfinal", "3",
           "--adalora_delta_t", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    return make_tiny_model(root / "model"), write_tiny_glue(root / "glue", "rte")


def _run(tiny, out, *extra, steps=8, seed=5):
    model, glue = tiny
    argv = ["--model_name_or_path", str(model), "--task_name", "rte", "--glue_dir", str(glue), "--output_dir",
            str(out), "--seed", str(seed), "--per_device_train_batch_size", "8", "--max_train_steps", str(steps)]
    return rg.main(argv + [str(x) for x in extra])


def _module(key: str) -> str:
    """'base_model.model.deberta.encoder.layer.0.attention.self.query_proj.lora_A.weight' -> 'deberta....query_proj'."""
    path = key.removeprefix("base_model.model.")
    return path[:path.index(".lora_")]


# ------------------------------------------------------------------------------------------ --lora_modules
def _adapted(out):
    cfg = json.loads((out / "adapter_config.json").read_text())
    weights = {_module(k) for k in load_file(out / "adapter_model.safetensors") if ".lora_" in k}
    pattern = {_module(k) for k in json.loads((out / "rank_pattern.json").read_text())}
    return cfg, weights, pattern


def test_lora_modules_adapts_exactly_the_named_matrices(tiny, tmp_path):
    attn = "deberta.encoder.layer.{}.attention.self.{}"
    assert _run(tiny, tmp_path / "qv", "--apply_lora", "--lora_type", "adalora", *ADALORA,
                "--lora_modules", "query_proj, value_proj") == 0
    cfg, weights, pattern = _adapted(tmp_path / "qv")
    assert sorted(cfg["target_modules"]) == ["query_proj", "value_proj"]
    expected = {attn.format(i, m) for i in LAYERS for m in ("query_proj", "value_proj")}
    assert weights == pattern == expected
    assert read_results(tmp_path / "qv")["kept_ranks"] == 2 * len(expected)

    # another list, another set: every nn.Linear called `dense` (attention output, feed-forward in/out, pooler)
    assert _run(tiny, tmp_path / "kd", "--apply_lora", "--lora_type", "adalora", *ADALORA,
                "--lora_modules", "key_proj,dense") == 0
    cfg, weights, pattern = _adapted(tmp_path / "kd")
    assert sorted(cfg["target_modules"]) == ["dense", "key_proj"]
    expected = {attn.format(i, "key_proj") for i in LAYERS} | {"pooler.dense"} | {
        f"deberta.encoder.layer.{i}.{m}.dense" for i in LAYERS for m in ("attention.output", "intermediate", "output")}
    assert weights == pattern == expected


# -------------------------------------------------------------------------------------- criteria differ
def test_criteria_allocate_different_ranks_on_the_same_run(tiny, tmp_path):
    """Same seed, data and schedule (pruning from rank 3 to 2 between updates 2 and 5, every update): the
    importance score alone decides which triplets survive, so every criterion keeps the budget's number of
    triplets (1/σ at most that: its ties at the threshold are pruned together) but a different set of them."""
    runs = {c: ["--lora_type", "vilora", "--vilora_criterion", c] for c in ("SNR_mean_abs", "mean", "sigma",
                                                                            "sensitivity")}
    runs["adalora"] = ["--lora_type", "adalora"]  # sensitivity under AdamW, the AdaLoRA baseline
    patterns = {}
    for name, flags in runs.items():
        out = tmp_path / name
        assert _run(tiny, out, "--apply_lora", *flags, *ADALORA, "--learning_rate", "0.05") == 0
        patterns[name] = json.loads((out / "rank_pattern.json").read_text())
        assert read_results(out)["criterion"] == ("sensitivity" if name == "adalora" else name)
    n_modules = len(patterns["mean"])
    for name, p in patterns.items():
        kept = sum(map(sum, p.values()))
        assert p.keys() == patterns["mean"].keys(), name
        if name == "sigma":
            # 1/σ scores tie where IVON's Hessian has barely moved (how many tie depends on the CPU's rounding), and
            # every triplet tied at the threshold is pruned, as in AdaLoRA: at most the budget survives.
            assert 0 < kept <= 2 * n_modules, (name, kept)
        else:
            assert kept == 2 * n_modules, (name, kept)
    names = list(patterns)
    same = [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if patterns[a] == patterns[b]]
    assert not same, f"criteria with identical rank patterns: {same}"


# ---------------------------------------------------------------------------------------- --with_tracking
def test_with_tracking_writes_tensorboard_events(tiny, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    assert _run(tiny, out, "--with_tracking", "--report_to", "tensorboard", "--project_prefix", "tb_",
                "--eval_steps", "2", "--eval_after_epochs", "0", "--learning_rate", "1e-3", steps=4) == 0
    events = sorted((out / "tb_rte").rglob("events.out.tfevents.*"))
    assert events, sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    scalars = {}
    for f in events:
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    assert {"train_loss", "lr", "eval_accuracy"} <= scalars.keys()
    log = read_log(out)
    # the tracker got the same numbers as log.jsonl, at the same steps
    assert scalars["train_loss"] == [(r["step"], pytest.approx(r["train_loss"])) for r in log if "train_loss" in r]
    assert [s for s, _ in scalars["eval_accuracy"]] == [r["step"] for r in log if "eval_accuracy" in r] == [2, 4]
    manifest = json.loads((out / ".run_manifest.json").read_text())
    assert "tb_rte" in json.dumps(manifest)  # --overwrite_output_dir removes it with the rest of the run


# ------------------------------------------------------------------------------------ AdamW no-decay groups
def test_adamw_exempts_biases_and_layernorm_weights_from_weight_decay(tiny, tmp_path, monkeypatch):
    import transformers

    built, models = [], []
    adamw_init = torch.optim.AdamW.__init__
    from_pretrained = transformers.AutoModelForSequenceClassification.from_pretrained.__func__

    def spy_init(self, *args, **kwargs):
        adamw_init(self, *args, **kwargs)
        built.append(self)

    def spy_from_pretrained(cls, *args, **kwargs):
        models.append(from_pretrained(cls, *args, **kwargs))
        return models[-1]

    monkeypatch.setattr(torch.optim.AdamW, "__init__", spy_init)
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained",
                        classmethod(spy_from_pretrained))
    assert _run(tiny, tmp_path / "out", "--weight_decay", "0.03", "--learning_rate", "1e-3", steps=1) == 0
    (model,) = models
    names = {id(p): n for n, p in model.named_parameters()}
    # the optimizer that trains this model (the script may build others, e.g. to check the flags)
    (opt,) = [o for o in built if all(id(p) in names for g in o.param_groups for p in g["params"])]
    decay = {g["weight_decay"]: [names[id(p)] for p in g["params"]] for g in opt.param_groups}
    assert sorted(decay) == [0.0, 0.03]
    assert decay[0.0] and all(n.endswith(".bias") or n.endswith("LayerNorm.weight") for n in decay[0.0])
    assert any("LayerNorm.weight" in n for n in decay[0.0]) and "classifier.bias" in decay[0.0]
    assert "deberta.embeddings.word_embeddings.weight" in decay[0.03] and "classifier.weight" in decay[0.03]
    assert not any(n.endswith(".bias") or "LayerNorm" in n for n in decay[0.03])
    # every trainable parameter is in exactly one group
    assert sorted(decay[0.0] + decay[0.03]) == sorted(n for n, p in model.named_parameters() if p.requires_grad)


# ------------------------------------------------------------------------------ reduce_lr_on_plateau direction
def _plateau_lrs(tiny, out, monkeypatch, accuracies: list[float]) -> list[float]:
    """The lr of each of len(accuracies) updates, with a dev evaluation after each one scoring `accuracies`
    (the real metric module computes, then its result is replaced); patience 0, factor 0.5."""
    import evaluate

    scripted = iter(accuracies)
    real_load = evaluate.load

    def scripted_metric(*args, **kwargs):
        metric = real_load(*args, **kwargs)
        return types.SimpleNamespace(add_batch=metric.add_batch,
                                     compute=lambda: (metric.compute(), {"accuracy": next(scripted)})[1])

    monkeypatch.setattr(evaluate, "load", scripted_metric)
    assert _run(tiny, out, "--lr_scheduler_type", "reduce_lr_on_plateau", "--lr_scheduler_kwargs",
                '{"patience": 0, "factor": 0.5}', "--learning_rate", "0.01", "--num_warmup_steps", "0",
                "--eval_steps", "1", "--eval_after_epochs", "0", steps=len(accuracies)) == 0
    log = read_log(out)
    assert [r["eval_accuracy"] for r in log if "eval_accuracy" in r] == accuracies
    return [r["lr"] for r in log if "lr" in r]


def test_reduce_lr_on_plateau_cuts_the_lr_when_accuracy_falls_not_when_it_rises(tiny, tmp_path, monkeypatch):
    """Accuracy is better when higher: rising accuracy keeps the LR, a fall halves it (patience 0)."""
    lrs = _plateau_lrs(tiny, tmp_path / "out", monkeypatch, [0.5, 0.6, 0.7, 0.65, 0.6, 0.8])
    # the lr of update s follows the evaluations after updates 1 .. s-1: cut after the 4th and the 5th
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.01, 0.005, 0.0025])
    assert read_results(tmp_path / "out")["best_eval_accuracy"] == 0.8


def test_reduce_lr_on_plateau_cuts_the_lr_when_accuracy_stays_flat(tiny, tmp_path, monkeypatch):
    lrs = _plateau_lrs(tiny, tmp_path / "out", monkeypatch, [0.5, 0.6, 0.6, 0.6])
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 0.005])


def test_a_metric_scheduler_refuses_mode_min(tiny, tmp_path, capsys):
    """The dev metric is better higher: mode "min" would cut the lr while the metric improves."""
    assert _run(tiny, tmp_path / "out", "--lr_scheduler_type", "reduce_lr_on_plateau", "--lr_scheduler_kwargs",
                '{"mode": "min"}', steps=2) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mode 'min'" in err[0] and '"max"' in err[0]


def test_a_plateau_state_saved_in_mode_min_resumes_as_the_same_state_in_mode_max():
    """Checkpoints written before mode "max" hold the negated metric: after the upgrade the scheduler makes the
    decisions it would have made."""
    from glue_run.schedule import upgrade_metric_scheduler_state

    param = torch.nn.Parameter(torch.zeros(1))
    old = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([param], lr=1.0), mode="min", patience=0,
                                                     factor=0.5, threshold=0.0)
    for acc in (0.5, 0.7):
        old.step(-acc)
    new = torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([param], lr=1.0), mode="max", patience=0,
                                                     factor=0.5, threshold=0.0)
    new.load_state_dict(upgrade_metric_scheduler_state(old.state_dict()))
    assert new.mode == "max" and new.best == 0.7
    new.step(0.8)  # better: no cut
    assert new.optimizer.param_groups[0]["lr"] == 1.0
    new.step(0.6)  # worse: cut
    assert new.optimizer.param_groups[0]["lr"] == 0.5
