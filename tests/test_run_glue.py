"""run_glue_no_trainer.py: GLUE loading, metrics, schedules, full fine-tuning end to end, bad input.

Runs call the script's main(argv) in-process on a tiny DeBERTa-v2 and tiny GLUE-layout data; the exit-code
behaviour of a real process is checked once with a subprocess.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from _run_glue_utils import REPO, SCRIPT, make_tiny_model, read_log, read_results, write_tiny_glue

import run_glue_no_trainer as rg
from glue_run import batches, manifest, schedule, settings
from glue_run import data as glue_data

# Row counts (headers excluded) of the standard GLUE download.
MANIFEST_ROWS = {("cola", "train"): 8551, ("cola", "validation"): 1043, ("sst2", "train"): 67349,
                 ("sst2", "validation"): 872, ("mrpc", "train"): 3668, ("mrpc", "validation"): 408,
                 ("stsb", "train"): 5749, ("stsb", "validation"): 1500, ("qnli", "validation"): 5463,
                 ("rte", "train"): 2490, ("rte", "validation"): 277, ("wnli", "train"): 635,
                 ("wnli", "validation"): 71}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_glue(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_glue")
    for task in ("rte", "stsb", "mnli", "mrpc", "cola"):
        write_tiny_glue(root, task)
    return root


def run_main(*argv, model, glue=None, out, task="rte", **flags) -> int:
    args = ["--model_name_or_path", str(model), "--output_dir", str(out), "--seed", "3",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8", "--learning_rate", "1e-3"]
    if task:
        args += ["--task_name", task]
    if glue:
        args += ["--glue_dir", str(glue)]
    for k, v in flags.items():
        args += [f"--{k}"] + ([] if v is True else [str(v)])
    return rg.main(args + list(argv))


# ------------------------------------------------------------------------------------------ pure pieces
def test_custom_lr_schedule_matches_spec_example():
    # The RTE vilora_clr row of scripts/hparams.tsv: W=100, C=400, first 2.0, second 0.5, end 0, N=50·78=3900.
    lam = lambda s: schedule.custom_lr_lambda(s, warmup_steps=100, const_end=400, total_steps=3900,  # noqa: E731
                                        first_lr=2.0, second_lr=0.5, end_lr=0.0)
    assert lam(0) == 0.0 and lam(1) == pytest.approx(0.02) and lam(99) == pytest.approx(1.98)
    assert lam(100) == lam(399) == 2.0
    assert lam(400) == 0.5 and lam(2150) == pytest.approx(0.25) and lam(3899) == pytest.approx(1.43e-4, rel=1e-2)


def test_custom_schedule_const_end_from_epochs_or_steps():
    def end(*flags):
        return schedule.custom_schedule_const_end(rg.parse_args(["--model_name_or_path", "m", *flags]), 78)
    assert end("--lr_schedule_const_epochs", "500") == 500       # > 100: a step count (the paper's tables)
    assert end("--lr_schedule_const_epochs", "1.5") == 117.0     # else epochs x updates per epoch
    assert end() == 78                                           # default: one epoch
    assert end("--lr_schedule_const_steps", "40") == 40          # explicit steps, small values included
    assert end("--lr_schedule_const_steps", "0") == 0


def test_const_steps_and_const_epochs_are_exclusive(tmp_path, capsys):
    code = rg.main(["--model_name_or_path", "m", "--task_name", "rte", "--output_dir", str(tmp_path / "o"),
                    "--lr_schedule_const_steps", "40", "--lr_schedule_const_epochs", "2"])
    assert code == 2 and "not both" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_step_plan_counts_partial_accumulation_groups():
    args = rg.parse_args(["--model_name_or_path", "m", "--task_name", "rte", "--per_device_train_batch_size", "8",
                          "--gradient_accumulation_steps", "3", "--num_train_epochs", "2"])
    plan = schedule.plan_steps(args, 50)  # 7 batches -> groups of 3, 3, 1 -> 3 updates per epoch
    assert (plan.batches_per_epoch, plan.updates_per_epoch, plan.max_train_steps, plan.num_epochs) == (7, 3, 6, 2)


def test_epoch_batches_are_reproducible_per_epoch():
    a, b = batches.epoch_batches(20, 6, seed=1, epoch=0), batches.epoch_batches(20, 6, seed=1, epoch=0)
    assert a == b and [len(x) for x in a] == [6, 6, 6, 2]
    assert sorted(i for x in a for i in x) == list(range(20))
    assert batches.epoch_batches(20, 6, seed=1, epoch=1) != a


def test_epoch_orders_of_different_seeds_are_independent():
    """Seeds 2021-2025 over 50 epochs (RTE's schedule): no epoch order of one seed reappears in another, and
    the orders agree position by position no more often than independent permutations would (1 in n)."""
    n, epochs = 2490, 50
    orders = {(s, e): [i for b in batches.epoch_batches(n, 32, seed=s, epoch=e) for i in b]
              for s in range(2021, 2026) for e in range(epochs)}
    assert len({tuple(o) for o in orders.values()}) == len(orders)   # with seed + epoch: 46 of 50 shared
    same = [sum(a == b for a, b in zip(orders[(s, e)], orders[(t, f)]))
            for s in range(2021, 2026) for t in range(s + 1, 2026) for e in range(epochs) for f in range(epochs)]
    # Fixed points between two independent permutations: Poisson(1) per pair; 25,000 pairs.
    assert abs(sum(same) / len(same) - 1.0) < 0.05 and max(same) <= 10


def test_metric_module_loads_offline(tmp_path):
    code = ("import evaluate, json; m = evaluate.load(%r, 'mrpc');"
            "print(json.dumps(m.compute(predictions=[0, 1, 1, 1], references=[0, 1, 0, 1])))" % str(rg.METRIC_DIR))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == pytest.approx({"accuracy": 0.75, "f1": 0.8})


def test_metric_keys_per_task():
    import evaluate
    cola = evaluate.load(str(rg.METRIC_DIR), "cola").compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0])
    assert cola == pytest.approx({"matthews_correlation": 1 / math.sqrt(3)})
    stsb = evaluate.load(str(rg.METRIC_DIR), "stsb").compute(predictions=[0.0, 1.0, 3.0], references=[0.0, 2.0, 4.0])
    assert set(stsb) == {"pearson", "spearmanr"} and stsb["spearmanr"] == pytest.approx(1.0)
    assert evaluate.load(str(rg.METRIC_DIR), "qnli").compute(predictions=[1, 0], references=[1, 1]) == {"accuracy": 0.5}


def test_ivon_predictive_eval_averages_samples_for_regression():
    """Defect 6: STS-B predictions are the mean over the K posterior samples' scores, not the last sample's.
    A real tiny regression model (1 label) and a real IVON posterior; the metric only records predictions."""
    import ivon
    from _peft_utils import batch as make_batch, tiny_deberta

    model = tiny_deberta(seed=0, num_labels=1)
    posterior = ivon.IVON(model.parameters(), lr=0.1, ess=50.0)  # small ess: samples far apart
    inputs = {k: v for k, v in make_batch(seed=4, size=4).items() if k != "labels"}
    torch.manual_seed(8)
    samples = []
    for _ in range(3):
        with posterior.sampled_params(train=False), torch.no_grad():
            samples.append(model(**inputs).logits.float()[:, 0])
    with torch.no_grad():
        mean_model = model(**inputs).logits[:, 0]

    seen = []
    metric = types.SimpleNamespace(add_batch=lambda predictions, references: seen.append(predictions),
                                   compute=lambda: {"pearson": 1.0})
    run = types.SimpleNamespace(model=model, ivon=posterior, is_regression=True, metric=metric,
                                args=types.SimpleNamespace(ivon_infer_mc_samples=3),
                                accelerator=types.SimpleNamespace(device=torch.device("cpu")))
    torch.manual_seed(8)  # the same three posterior draws
    rg.evaluate(run, [dict(inputs, labels=torch.zeros(4))])
    (pred,) = seen
    expected = (samples[0] + samples[1] + samples[2]) / 3
    torch.testing.assert_close(torch.from_numpy(pred), expected, rtol=0, atol=1e-6)
    for other in (samples[-1], mean_model):  # neither the last sample nor the posterior mean
        assert (torch.from_numpy(pred) - other).abs().max() > 1e-3
    assert run.n_eval == 4


# ------------------------------------------------------------------------------------------ GLUE loading
@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "stsb", "qnli", "rte", "wnli"])
def test_glue_dir_matches_manifest(glue_dir, task):
    features = glue_data.glue_features(task)
    for split in ("train", "validation"):
        path = glue_dir / glue_data.GLUE_FOLDER[task] / glue_data.GLUE_SPLIT_FILES[split]
        if not path.exists():
            assert (task, split) not in MANIFEST_ROWS
            continue
        import datasets
        ds = datasets.Dataset.from_dict(glue_data.read_glue_tsv(path, task), features=features)
        assert len(ds) == MANIFEST_ROWS[(task, split)]
        assert ds.column_names == [*glue_data.GLUE_TSV[task][1], "label", "idx"]
        assert ds["idx"][:3] == [0, 1, 2]
        labels = ds["label"]
        if task == "stsb":
            assert 0.0 <= min(labels) and max(labels) <= 5.0
        else:
            assert set(labels) == set(range(len(glue_data.LABEL_NAMES[task])))
    # First dev rows as in the Hub's nyu-mll/glue validation splits (label ids, start of the text).
    first = {"cola": ("sentence", 1, "The sailors rode"), "rte": ("sentence1", 1, "Dana Reeve"),
             "qnli": ("question", 0, "What came into force"), "mrpc": ("sentence1", 1, "He said the foodservice"),
             "sst2": ("sentence", 1, "it 's a charming"), "wnli": ("sentence1", 0, "The drain is clogged")}
    if task in first and (glue_dir / glue_data.GLUE_FOLDER[task] / "dev.tsv").exists():
        col, label, text = first[task]
        dev = glue_data.read_glue_tsv(glue_dir / glue_data.GLUE_FOLDER[task] / "dev.tsv", task)
        assert dev["label"][0] == label and dev[col][0].startswith(text)
    if task == "mrpc":  # quoting off: a leading quote stays part of the text
        assert glue_data.read_glue_tsv(glue_dir / "MRPC" / "dev.tsv", task)["sentence2"][0].startswith('"The foodservice')


def test_glue_dir_label_ids_follow_the_hub(glue_dir):
    # Hub ids: rte/qnli entailment=0; MRPC header starts with a BOM that must not leak into a column.
    rte = glue_data.read_glue_tsv(glue_dir / "RTE" / "dev.tsv", "rte")
    raw = (glue_dir / "RTE" / "dev.tsv").read_text().splitlines()[1].split("\t")
    assert rte["label"][0] == {"entailment": 0, "not_entailment": 1}[raw[3]]
    assert rte["sentence1"][0] == raw[1]
    mrpc = glue_data.read_glue_tsv(glue_dir / "MRPC" / "dev.tsv", "mrpc")
    assert not mrpc["sentence1"][0].startswith("\ufeff") and len(mrpc["label"]) == 408


def test_tiny_mnli_loads_matched_and_mismatched(tiny_glue):
    args = rg.parse_args(["--model_name_or_path", "m", "--task_name", "mnli", "--glue_dir", str(tiny_glue)])
    raw = glue_data.load_glue(args)
    assert set(raw) == {"train", "validation_matched", "validation_mismatched"}
    assert raw["train"].features["label"].names == ["entailment", "neutral", "contradiction"]
    assert raw["train"]["label"][:3] == [0, 1, 2] and raw["train"].column_names[:2] == ["premise", "hypothesis"]


# ------------------------------------------------------------------------------------------ end to end
def test_full_finetune_adamw_outputs(tiny_model, tiny_glue, tmp_path):
    out = tmp_path / "out"
    assert run_main(model=tiny_model, glue=tiny_glue, out=out, num_train_epochs=2, eval_steps=2,
                    eval_after_epochs=0, checkpointing_steps="epoch", gradient_accumulation_steps=4) == 0
    res = read_results(out)
    # 48 examples / batch 8 = 6 micro-batches; gas 4 -> updates after batches 4 and 6 -> 2 per epoch
    assert res["train_steps"] == 4 and res["lora_type"] == "full" and res["use_ivon"] is False
    assert res["best_step"] in (2, 4) and res["criterion"] is None
    assert res["trainable_params"] > 1000
    for f in ("config.json", "model.safetensors", "tokenizer.json", "run_config.json", "log.jsonl"):
        assert (out / f).is_file(), f
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_4"]
    log = read_log(out)
    train_lines = [r for r in log if "lr" in r]
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4]
    assert all({"step", "epoch"} <= set(r) for r in log)
    evals = [r for r in log if "eval_accuracy" in r]
    assert [r["step"] for r in evals] == [2, 4] and evals[-1]["n_eval"] == 16
    # the results are the last evaluation's, and the best one's at best_step
    assert res["eval_accuracy"] == evals[-1]["eval_accuracy"] and res["eval_accuracy"] * 16 % 1 == 0
    best = next(r for r in evals if r["step"] == res["best_step"])
    assert res["best_eval_accuracy"] == best["eval_accuracy"] == max(r["eval_accuracy"] for r in evals)
    cfg = json.loads((out / "run_config.json").read_text())
    assert cfg["seed"] == 3 and cfg["versions"]["torch"] == torch.__version__ and cfg["args"]["task_name"] == "rte"
    assert cfg["machine"]["torch_threads"] == torch.get_num_threads()
    assert cfg["machine"]["logical_cpus"] == os.cpu_count()
    if Path("/proc/sys/kernel/random/boot_id").is_file():  # Linux: runs on the same machine share it
        assert cfg["machine"]["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    hidden = {p.name for p in out.iterdir() if p.name.startswith(".")}
    assert hidden == {manifest.LOCK_FILE, manifest.MANIFEST}  # no temp files left behind


def test_custom_schedule_stsb_regression(tiny_model, tiny_glue, tmp_path):
    out = tmp_path / "out"
    assert run_main(model=tiny_model, glue=tiny_glue, out=out, task="stsb", max_train_steps=10,
                    use_custom_lr_schedule=True, num_warmup_steps=2, lr_schedule_const_epochs=1,
                    lr_schedule_first_lr=2e-3, lr_schedule_second_lr=1e-3, lr_schedule_end_lr=1e-4) == 0
    res = read_results(out)
    assert set(res) >= {"eval_pearson", "eval_spearmanr", "best_eval_pearson"} and res["train_steps"] == 10
    lrs = [r["lr"] for r in read_log(out) if "lr" in r]
    # W = 2, C = 1 epoch x 6 updates, N = 10: warm-up, constant, drop to second_lr, linear decay to end_lr
    assert lrs == pytest.approx([0.0, 1e-3, 2e-3, 2e-3, 2e-3, 2e-3, 1e-3, 7.75e-4, 5.5e-4, 3.25e-4])


def test_mnli_reports_matched_and_mismatched(tiny_model, tiny_glue, tmp_path):
    out = tmp_path / "out"
    assert run_main(model=tiny_model, glue=tiny_glue, out=out, task="mnli", max_train_steps=3) == 0
    res = read_results(out)
    assert {"eval_accuracy", "eval_accuracy_mm", "best_eval_accuracy_mm"} <= set(res)


def test_eval_only_and_finished_dir_is_skipped(tiny_model, tiny_glue, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main(model=tiny_model, glue=tiny_glue, out=out, eval_only=True) == 0
    res = read_results(out)
    assert res["train_steps"] == 0 and "eval_accuracy" in res and not (out / "model.safetensors").exists()
    before = (out / "all_results.json").stat().st_mtime_ns
    assert run_main(model=tiny_model, glue=tiny_glue, out=out, eval_only=True) == 0
    assert "already holds finished results" in capsys.readouterr().err
    assert (out / "all_results.json").stat().st_mtime_ns == before
    assert run_main(model=tiny_model, glue=tiny_glue, out=out, max_train_steps=2, overwrite_output_dir=True) == 0
    assert read_results(out)["train_steps"] == 2


def test_train_and_validation_files(tiny_model, tmp_path):
    for name, n in (("train.csv", 24), ("dev.csv", 8)):
        rows = ["sentence1,sentence2,label"] + [f"the {'good' if i % 2 else 'bad'} cat,a dog,{'yes' if i % 2 else 'no'}"
                                                 for i in range(n)]
        (tmp_path / name).write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert rg.main(["--model_name_or_path", str(tiny_model), "--train_file", str(tmp_path / "train.csv"),
                    "--validation_file", str(tmp_path / "dev.csv"), "--output_dir", str(out), "--seed", "0",
                    "--max_train_steps", "2"]) == 0
    res = read_results(out)
    assert "eval_accuracy" in res and res["task_name"] is None


def test_gradient_checkpointing_is_enabled(tiny_model, tiny_glue, tmp_path, monkeypatch):
    seen = {}
    real = rg.build_model

    def spy(*a, **k):
        model, tok = real(*a, **k)
        seen["gc"] = getattr(model, "is_activation_checkpointing", None)
        if seen["gc"] is None:
            seen["gc"] = model.is_gradient_checkpointing
        return model, tok

    monkeypatch.setattr(rg, "build_model", spy)
    assert run_main(model=tiny_model, glue=tiny_glue, out=tmp_path / "o", max_train_steps=1,
                    gradient_checkpointing=True) == 0
    assert seen["gc"] is True


def test_real_minilm_rte_full_dev_set(minilm_path, glue_dir, tmp_path):
    """A short real run: pretrained MiniLM on RTE from the local GLUE copy, scored on all 277 dev pairs."""
    out = tmp_path / "out"
    assert rg.main(["--model_name_or_path", str(minilm_path), "--task_name", "rte", "--glue_dir", str(glue_dir),
                    "--output_dir", str(out), "--seed", "0", "--max_length", "64", "--max_train_steps", "24",
                    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "64",
                    "--learning_rate", "3e-5"]) == 0
    res = read_results(out)
    evals = [r for r in read_log(out) if "eval_accuracy" in r]
    assert evals[-1]["n_eval"] == 277 and res["train_steps"] == 24
    correct = res["eval_accuracy"] * 277
    assert abs(correct - round(correct)) < 1e-6 and 0.3 < res["eval_accuracy"] < 0.8


# ------------------------------------------------------------------------------------------ bad input
def _bad(capsys, code, *, model, glue=None, out, expect: str, **flags):
    assert run_main(model=model, glue=glue, out=out, **flags) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err and expect in err[-1], err
    assert not out.exists(), "bad input must not write to output_dir"
    return err[-1]


def test_bad_inputs_exit_2_with_one_line(tiny_model, tiny_glue, tmp_path, capsys):
    out = tmp_path / "never"
    m = dict(model=tiny_model, out=out)
    line = _bad(capsys, 2, **m, glue=tiny_glue, task="foo", expect="invalid choice")
    assert "rte" in line and "cola" in line
    _bad(capsys, 2, **m, glue=tmp_path / "noglue", expect="is not a directory")
    (tmp_path / "empty").mkdir()
    _bad(capsys, 2, **m, glue=tmp_path / "empty", expect="GLUE file not found")
    _bad(capsys, 2, **m, glue=tiny_glue, lora_type="adalora", expect="--lora_type adalora needs --apply_lora")
    _bad(capsys, 2, **m, glue=tiny_glue, apply_lora=True, lora_type="dora", expect="valid: lora, adalora, vilora")
    line = _bad(capsys, 2, **m, glue=tiny_glue, apply_lora=True, lora_type="vilora", vilora_criterion="snr",
                expect="unknown --vilora_criterion 'snr'")
    assert "SNR_mean_abs" in line and "sensitivity" in line
    _bad(capsys, 2, **m, glue=tiny_glue, apply_lora=True, lora_type="adalora", adalora_tinit=5, adalora_tfinal=4,
         max_train_steps=8, expect="AdaLoRA schedule impossible")
    _bad(capsys, 2, **m, glue=tiny_glue, use_custom_lr_schedule=True, lr_schedule_const_epochs=2,
         num_train_epochs=2, expect="constant phase ends at step 12")
    _bad(capsys, 2, **m, glue=tiny_glue, with_tracking=True, report_to="tensorboard",
         expect="needs the 'tensorboard' package") if not settings.importable("tensorboard") else None
    _bad(capsys, 2, **m, glue=None, expect="pass --glue_dir")  # conftest makes the Hub offline
    _bad(capsys, 2, **m, glue=tiny_glue, lr_scheduler_type="bogus", expect="invalid choice")
    _bad(capsys, 2, **m, glue=tiny_glue, use_ivon=True, fp16=True, expect="--fp16 cannot be used with IVON")


def test_bad_glue_files_name_file_and_line(tiny_model, tmp_path, capsys):
    glue = write_tiny_glue(tmp_path / "g", "rte", n_train=10, n_dev=4)
    path = glue / "RTE" / "train.tsv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + [lines[3].replace("\tentailment", "\tmaybe")
                                           .replace("\tnot_entailment", "\tmaybe")] + lines[4:]) + "\n")
    line = _bad(capsys, 2, model=tiny_model, glue=glue, out=tmp_path / "o", expect=f"{path}:4: label 'maybe'")
    assert "valid: entailment, not_entailment" in line
    stsb = write_tiny_glue(tmp_path / "s", "stsb", n_train=6, n_dev=4) / "STS-B" / "train.tsv"
    rows = stsb.read_text().splitlines()
    stsb.write_text("\n".join(rows[:2] + [rows[2].rsplit("\t", 1)[0] + "\t7.5"] + rows[3:]) + "\n")
    line = _bad(capsys, 2, model=tiny_model, glue=tmp_path / "s", task="stsb", out=tmp_path / "o",
                expect=f"{stsb}:3: label '7.5' is not an stsb score")
    path.write_text("\n".join(lines[:5] + ["7\tonly two"] + lines[5:]) + "\n")
    _bad(capsys, 2, model=tiny_model, glue=glue, out=tmp_path / "o",
         expect=f"{path}:6: expected 4 tab-separated columns, found 2")


def test_nonfinite_loss_stops_and_keeps_checkpoint(tiny_model, tiny_glue, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_main(model=tiny_model, glue=tiny_glue, out=out, learning_rate=1e30, checkpointing_steps=1,
                    num_train_epochs=3) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non-finite training loss" in err and "Last checkpoint:" in err and "step_" in err
    assert not (out / "all_results.json").exists() and (out / "checkpoints" / "step_1").is_dir()


def test_unfinished_dir_needs_resume_or_overwrite(tiny_model, tiny_glue, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "checkpoints" / "step_3").mkdir(parents=True)
    assert run_main(model=tiny_model, glue=tiny_glue, out=out, max_train_steps=2) == 2
    assert "--resume_from_checkpoint latest" in capsys.readouterr().err


def test_subprocess_exit_status_and_single_line(tiny_model, tiny_glue, tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--model_name_or_path", str(tiny_model), "--task_name", "rte",
                          "--glue_dir", str(tiny_glue), "--output_dir", str(tmp_path / "o"),
                          "--lora_type", "vilora"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "run_glue_no_trainer.py: error: --lora_type vilora needs --apply_lora"]
    assert not (tmp_path / "o").exists()


SCHEDULER_KWARGS = {"cosine_with_min_lr": '{"min_lr_rate": 0.1}', "cosine_warmup_with_min_lr": '{"min_lr_rate": 0.1}',
                    "warmup_stable_decay": '{"num_decay_steps": 2}'}


@pytest.mark.parametrize("name", [s.value for s in __import__("transformers").SchedulerType])
def test_every_transformers_scheduler_runs(tiny_model, tiny_glue, tmp_path, name):
    flags = {"lr_scheduler_type": name, "max_train_steps": 4, "num_warmup_steps": 1, "eval_steps": 2,
             "eval_after_epochs": 0}
    if name in SCHEDULER_KWARGS:
        flags["lr_scheduler_kwargs"] = SCHEDULER_KWARGS[name]
    assert run_main(model=tiny_model, glue=tiny_glue, out=tmp_path / "o", **flags) == 0
    lrs = [r["lr"] for r in read_log(tmp_path / "o") if "lr" in r]
    assert len(lrs) == 4 and lrs[0] in (0.0, 1e-3) and all(0 <= lr <= 1e-3 for lr in lrs)
    if name == "linear":  # the first update uses lambda(0) = 0 with warm-up, as in the reference
        assert lrs == pytest.approx([0.0, 1e-3, 2e-3 / 3, 1e-3 / 3])


def test_scheduler_needing_arguments_says_how(tiny_model, tiny_glue, tmp_path, capsys):
    _bad(capsys, 2, model=tiny_model, glue=tiny_glue, out=tmp_path / "o", lr_scheduler_type="warmup_stable_decay",
         expect="--lr_scheduler_kwargs")


def test_pad_to_max_length_and_bf16(tiny_model, tiny_glue, tmp_path):
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(True)  # accelerate keeps one process-wide precision setting
    try:
        assert run_main(model=tiny_model, glue=tiny_glue, out=tmp_path / "o", max_train_steps=2, max_length=24,
                        pad_to_max_length=True, mixed_precision="bf16") == 0
    finally:
        AcceleratorState._reset_state(True)
    assert read_results(tmp_path / "o")["train_steps"] == 2


def test_resume_from_final_checkpoint_does_not_train_further(tiny_model, tiny_glue, tmp_path):
    out = tmp_path / "out"
    assert run_main(model=tiny_model, glue=tiny_glue, out=out, max_train_steps=4, checkpointing_steps=4) == 0
    before, log_before = read_results(out), read_log(out)
    (out / "all_results.json").unlink()  # as if killed after the last checkpoint, before the outputs
    assert run_main(model=tiny_model, glue=tiny_glue, out=out, max_train_steps=4, checkpointing_steps=4,
                    resume_from_checkpoint="latest") == 0
    after = read_results(out)
    assert after["train_steps"] == 4 and after["eval_accuracy"] == before["eval_accuracy"]
    assert read_log(out) == log_before


def test_custom_file_labels_must_fit_the_task(tiny_model, tmp_path, capsys):
    rows = ["sentence1,sentence2,label", "a cat,a dog,entailment", "a cat,a dog,maybe"]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "o"
    assert rg.main(["--model_name_or_path", str(tiny_model), "--task_name", "rte", "--train_file",
                    str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "train.csv"),
                    "--output_dir", str(out)]) == 2
    assert "label 'maybe' is not a rte label" in capsys.readouterr().err and not out.exists()
