"""run_glue_no_trainer.py with adapters: every method x optimizer x LR schedule on a tiny DeBERTa-v2, continuing
from a saved adapter with its IVON Hessian, and evaluating a saved adapter."""
from __future__ import annotations

import json
import math

import pytest
import torch

from _run_glue_utils import have_adapters, make_tiny_model, read_log, read_results, write_tiny_glue
import run_glue_no_trainer as rg
from glue_run import ivon_stats

pytestmark = pytest.mark.skipif(not have_adapters(), reason="peft/ivon packages not available yet")
N_MODULES = 13  # tiny DeBERTa-v2 default targets: q/k/v/attention-output/intermediate/output per layer + pooler
ADALORA = ["--adalora_init_r", "3", "--adalora_target_r", "2", "--adalora_tinit", "2", "--adalora_tfinal", "3",
           "--adalora_delta_t", "1", "--lora_alpha", "16"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    return make_tiny_model(root / "model"), write_tiny_glue(root / "glue", "rte")


def _run(tiny, out, *extra, task="rte", steps=8):
    model, glue = tiny
    argv = ["--model_name_or_path", str(model), "--task_name", task, "--glue_dir", str(glue), "--output_dir",
            str(out), "--seed", "5", "--per_device_train_batch_size", "8", "--max_train_steps", str(steps)]
    return rg.main(argv + [str(x) for x in extra])


METHODS = [  # (lora_type or None for full fine-tuning, use_ivon)
    (None, True), ("lora", False), ("lora", True), ("adalora", False), ("adalora", True), ("vilora", True)]


@pytest.mark.parametrize("schedule", ["linear", "clr"])
@pytest.mark.parametrize("lora_type,use_ivon", METHODS)
def test_method_optimizer_schedule(tiny, tmp_path, lora_type, use_ivon, schedule):
    out = tmp_path / "out"
    extra = []
    if lora_type:
        extra += ["--apply_lora", "--lora_type", lora_type] + (ADALORA if lora_type != "lora" else ["--lora_r", "2"])
    if use_ivon:
        extra += ["--use_ivon", "--learning_rate", "0.05", "--ivon_infer_mc_samples", "2"]
    else:
        extra += ["--learning_rate", "1e-3"]
    if schedule == "clr":
        extra += ["--use_custom_lr_schedule", "--num_warmup_steps", "2", "--lr_schedule_const_epochs", "1",
                  "--lr_schedule_first_lr", "0.04", "--lr_schedule_second_lr", "0.02", "--lr_schedule_end_lr", "0"]
    assert _run(tiny, out, *extra) == 0
    res = read_results(out)
    kind = lora_type or "full"
    assert res["lora_type"] == kind and res["use_ivon"] is use_ivon and res["train_steps"] == 8
    assert res["criterion"] == {"vilora": "SNR_mean_abs", "adalora": "sensitivity"}.get(kind)
    log = read_log(out)
    train_lines = [r for r in log if "lr" in r]
    assert len(train_lines) == 8
    evals = [r for r in log if "eval_accuracy" in r]  # scored over the 16 dev examples
    assert evals and all(r["n_eval"] == 16 for r in evals) and res["eval_accuracy"] * 16 % 1 == 0
    assert res["eval_accuracy"] == evals[-1]["eval_accuracy"]
    assert res["best_eval_accuracy"] == max(r["eval_accuracy"] for r in evals)
    if schedule == "clr":  # W = 2, C = 1 epoch = 6 updates, N = 8; absolute lrs whatever the optimizer
        assert [r["lr"] for r in train_lines] == pytest.approx([0.0, 0.02, 0.04, 0.04, 0.04, 0.04, 0.02, 0.01])
    if lora_type:
        assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
        assert not (out / "model.safetensors").exists()
    else:
        assert (out / "model.safetensors").is_file()
    assert (out / "ivon_state.pt").is_file() == use_ivon
    if use_ivon:  # Hessian statistics on every eval line and every HESS_LOG_EVERY (100) updates only
        eval_lines = [r for r in log if "eval_accuracy" in r]
        assert eval_lines and all("hess_mean" in r for r in eval_lines)
        assert not any("hess_mean" in r for r in train_lines)
    if kind in ("adalora", "vilora"):
        pattern = json.loads((out / "rank_pattern.json").read_text())
        assert len(pattern) == N_MODULES and all(len(v) == 3 for v in pattern.values())
        assert not any(".default" in k for k in pattern)
        kept = sum(map(sum, pattern.values()))
        # total 8 steps, tfinal 3: the final phase fixes the budget at target_r x modules
        assert kept == res["kept_ranks"] == 2 * N_MODULES
        assert train_lines[-1]["budget"] == 2 * N_MODULES and train_lines[-1]["kept_ranks"] == kept
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert cfg["rank_pattern"] == pattern and cfg["total_step"] == 8


def test_custom_schedule_with_ivon_sets_absolute_lrs(tiny, tmp_path):
    out = tmp_path / "out"
    assert _run(tiny, out, "--apply_lora", "--lora_type", "vilora", *ADALORA, "--use_custom_lr_schedule",
                "--num_warmup_steps", "2", "--lr_schedule_const_epochs", "1", "--lr_schedule_first_lr", "0.04",
                "--lr_schedule_second_lr", "0.02", "--lr_schedule_end_lr", "0", "--learning_rate", "123") == 0
    lrs = [r["lr"] for r in read_log(out) if "lr" in r]
    # --learning_rate is ignored; W = 2, C = 6 updates (1 epoch), N = 8
    assert lrs == pytest.approx([0.0, 0.02, 0.04, 0.04, 0.04, 0.04, 0.02, 0.01])


def test_continue_from_saved_adapter_with_ivon_hessian(tiny, tmp_path, monkeypatch):
    first = tmp_path / "first"
    assert _run(tiny, first, "--apply_lora", "--lora_type", "vilora", *ADALORA, "--learning_rate", "0.05") == 0
    saved = torch.load(first / "ivon_state.pt", weights_only=True)
    checked = {}
    real = rg.load_ivon_state

    def spy(run, path):
        real(run, path)
        for name, p in run.peft_model.named_parameters():
            if p.requires_grad:
                assert torch.equal(run.ivon.param_state(p)["hess"], saved["params"][name]["hess"]), name
                checked[name] = tuple(p.shape)

    monkeypatch.setattr(rg, "load_ivon_state", spy)
    second = tmp_path / "second"
    assert _run(tiny, second, "--apply_lora", "--lora_type", "vilora", "--lora_path", str(first),
                "--learning_rate", "0.05", steps=8) == 0
    assert checked and any(s[0] < 3 for n, s in checked.items() if ".lora_A." in n)  # resized adapters
    res = read_results(second)
    assert res["lora_type"] == "vilora" and res["train_steps"] == 8
    # evaluate the saved adapter only
    third = tmp_path / "third"
    assert _run(tiny, third, "--apply_lora", "--lora_path", str(first), "--eval_only") == 0
    # the saved adapter reproduces the first run's final (posterior-mean) evaluation
    assert read_results(third)["eval_accuracy"] == read_results(first)["eval_accuracy"]
    assert read_results(third)["train_steps"] == 0


def test_ivon_mc_samples_with_accumulation(tiny, tmp_path, monkeypatch):
    """Every micro-batch draws --ivon_train_mc_samples training samples; updates follow accumulation groups."""
    import ivon
    calls = []
    real = ivon.IVON.sampled_params

    def counting(self, train=False):
        calls.append(train)
        return real(self, train=train)

    monkeypatch.setattr(ivon.IVON, "sampled_params", counting)
    out = tmp_path / "out"
    assert _run(tiny, out, "--apply_lora", "--lora_type", "vilora", *ADALORA, "--learning_rate", "0.05",
                "--ivon_train_mc_samples", "2", "--gradient_accumulation_steps", "4", "--ivon_infer_mc_samples", "3",
                steps=6) == 0
    # 6 micro-batches per epoch, gas 4 -> updates after batches 4 and 6; 6 updates = 3 epochs = 18 micro-batches
    assert calls.count(True) == 18 * 2
    assert calls.count(False) == 3 * 2 * 3  # 3 epoch-end evals x 2 dev batches x 3 samples
    assert read_results(out)["train_steps"] == 6


def test_eval_only_ivon_predictive_from_saved_adapter(tiny, tmp_path, monkeypatch):
    """--eval_only on a saved VILoRA adapter samples from the saved posterior (its ess and Hessian)."""
    import ivon
    first = tmp_path / "first"
    assert _run(tiny, first, "--apply_lora", "--lora_type", "vilora", *ADALORA, "--learning_rate", "0.05") == 0
    calls = []
    real = ivon.IVON.sampled_params
    monkeypatch.setattr(ivon.IVON, "sampled_params", lambda self, train=False: calls.append(train) or real(self, train))
    out = tmp_path / "eval"
    assert _run(tiny, out, "--apply_lora", "--lora_path", str(first), "--eval_only",
                "--ivon_infer_mc_samples", "3") == 0
    res = read_results(out)
    assert res["use_ivon"] is True and res["train_steps"] == 0 and calls == [False] * (2 * 3)
    assert not (out / "ivon_state.pt").exists() and not (out / "adapter_model.safetensors").exists()


def _as_original_code_saved_it(folder, name="ivon_hessian_resized.state"):
    """Replace our ivon_state.pt by the original code's file: one flat Hessian in parameter order, int ess."""
    ours = torch.load(folder / "ivon_state.pt", weights_only=True)
    flat = torch.cat([st["hess"].reshape(-1) for st in ours["params"].values()])  # saved in parameter order
    torch.save({"hess": flat, "ess": int(ours["ess"]), "weight_decay": ours["weight_decay"], "numel": flat.numel()},
               folder / name)
    (folder / "ivon_state.pt").unlink()
    return ours


def test_continue_and_evaluate_from_the_original_codes_hessian_file(tiny, tmp_path, monkeypatch):
    """An adapter folder written by the original fork (ivon_hessian_resized.state) is continued with its Hessian
    and evaluated with its posterior (its ess), not sampled from hess_init."""
    import ivon
    first = tmp_path / "first"
    assert _run(tiny, first, "--apply_lora", "--lora_type", "vilora", *ADALORA, "--learning_rate", "0.05") == 0
    ours = _as_original_code_saved_it(first)
    seen = {}
    real = rg.load_ivon_state

    def spy(run, path):
        real(run, path)
        seen["file"] = path.name
        for name, p in run.peft_model.named_parameters():
            if p.requires_grad:
                assert torch.equal(run.ivon.param_state(p)["hess"], ours["params"][name]["hess"]), name

    monkeypatch.setattr(rg, "load_ivon_state", spy)
    assert _run(tiny, tmp_path / "second", "--apply_lora", "--lora_path", str(first), "--learning_rate", "0.05") == 0
    assert seen == {"file": "ivon_hessian_resized.state"}
    built = []
    real_init = ivon.IVON.__init__
    monkeypatch.setattr(ivon.IVON, "__init__", lambda self, *a, **k: built.append(k["ess"]) or real_init(self, *a, **k))
    seen.clear()
    assert _run(tiny, tmp_path / "eval", "--apply_lora", "--lora_path", str(first), "--eval_only",
                "--ivon_infer_mc_samples", "2") == 0
    assert seen == {"file": "ivon_hessian_resized.state"} and built == [48]  # ess = the 48 training examples


def test_mc_evaluation_without_a_saved_posterior_is_refused(tiny, tmp_path, capsys):
    first = tmp_path / "first"
    assert _run(tiny, first, "--apply_lora", "--lora_type", "vilora", *ADALORA, "--learning_rate", "0.05") == 0
    (first / "ivon_state.pt").unlink()
    capsys.readouterr()
    out = tmp_path / "eval"
    assert _run(tiny, out, "--apply_lora", "--lora_path", str(first), "--eval_only", "--ivon_infer_mc_samples", "2",
                "--ivon_ess", "100") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err) and err[-1].startswith("run_glue_no_trainer.py: error: --eval_only")
    assert "ivon_hessian_resized.state" in err[-1] and "hess_init" in err[-1]
    assert not out.exists()


def test_a_mismatched_original_hessian_file_is_bad_input(tiny, tmp_path, capsys):
    first = tmp_path / "first"
    assert _run(tiny, first, "--apply_lora", "--lora_type", "vilora", *ADALORA, "--learning_rate", "0.05") == 0
    torch.save({"hess": torch.ones(7), "ess": 48, "weight_decay": 1e-8, "numel": 7}, first / "ivon_state.pt")
    capsys.readouterr()
    assert _run(tiny, tmp_path / "second", "--apply_lora", "--lora_path", str(first), "--learning_rate", "0.05") == 2
    assert "its Hessian has 7 elements" in capsys.readouterr().err


def test_spread_is_the_95th_over_the_5th_percentile():
    assert ivon_stats.spread(torch.arange(1.0, 101.0)[torch.randperm(100)]) == 95 / 5
    assert ivon_stats.spread(torch.tensor([0.0] * 10 + [1.0] * 90)) == math.inf  # 5th percentile 0
    assert ivon_stats.spread(torch.tensor([3.0])) == 1.0


def test_posterior_stats_against_hand_values():
    """The IVON statistics of the log, on a real adapter and optimizer in states whose values are known."""
    import math
    import types

    import ivon
    import peft
    from _peft_utils import tiny_deberta
    model = peft.get_peft_model(tiny_deberta(), peft.VILoraConfig(init_r=3, target_r=2, task_type="SEQ_CLS"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = ivon.IVON(params, lr=0.1, ess=400.0, hess_init=0.25, weight_decay=1e-8, clip_radius=1e-3)
    run = types.SimpleNamespace(ivon=opt, peft_model=model, start_means=None)
    run.start_means = ivon_stats.trainable_flat(run)
    adapter = [p for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n]
    n_adapter = sum(p.numel() for p in adapter)
    stats = ivon_stats.posterior_stats(run)
    assert stats["post_sigma_median"] == pytest.approx(1 / math.sqrt(400 * (0.25 + 1e-8)), rel=1e-6)
    assert stats["mean_shift_rms"] == 0 and stats["clip_fraction"] == 0  # no step yet: zero momentum
    assert stats["post_sigma_spread"] == 1.0  # every element's Hessian at hess_init: one σ for all
    expected = torch.cat([p.detach().abs().reshape(-1) for p in adapter]).median().item()
    assert stats["post_absmu_median"] == pytest.approx(expected)  # adapters only: the head is left out
    with torch.no_grad():
        adapter[0].add_(0.5)                           # move one tensor's means by 0.5
        opt.param_state(adapter[1])["momentum"].fill_(1.0)  # a step far beyond the clip radius
        opt.current_step = 1
    stats = ivon_stats.posterior_stats(run)
    assert stats["mean_shift_rms"] == pytest.approx(math.sqrt(0.25 * adapter[0].numel() / n_adapter), rel=1e-5)
    assert stats["clip_fraction"] == pytest.approx(adapter[1].numel() / n_adapter)
