"""Kill-and-resume: a run killed with SIGKILL after a checkpoint and resumed with --resume_from_checkpoint latest
ends with bit-identical weights, IVON state, metrics and log as the same run left alone (CPU, same seed)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from _run_glue_utils import (REPO, SCRIPT, have_adapters, make_tiny_model, process_env, read_log, read_results,
                             write_tiny_glue)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return make_tiny_model(root / "model"), write_tiny_glue(root / "glue", "rte")


def _cmd(tiny, out, extra):
    model, glue = tiny
    return [sys.executable, str(SCRIPT), "--model_name_or_path", str(model), "--task_name", "rte", "--glue_dir",
            str(glue), "--output_dir", str(out), "--seed", "11", "--per_device_train_batch_size", "8",
            "--gradient_accumulation_steps", "2", "--max_train_steps", "12", "--checkpointing_steps", "3",
            "--eval_steps", "2", "--eval_after_epochs", "0", *extra]


def _finish(cmd, **env):
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO, env=process_env(**env))
    assert res.returncode == 0, res.stderr[-2000:]


def _without_runtime(results):
    return {k: v for k, v in results.items() if k != "train_runtime_s"}


CASES = {
    "full_adamw": [],
    "vilora_ivon": ["--apply_lora", "--lora_type", "vilora", "--adalora_init_r", "3", "--adalora_target_r", "2",
                    "--adalora_tinit", "2", "--adalora_tfinal", "3", "--adalora_delta_t", "1", "--learning_rate",
                    "0.05", "--ivon_infer_mc_samples", "2", "--lora_dropout", "0.1"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_sigkill_then_resume_matches_uninterrupted(tiny, tmp_path, case):
    if case != "full_adamw" and not have_adapters():
        pytest.skip("peft/ivon packages not available yet")
    extra = CASES[case]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    _finish(_cmd(tiny, ref, extra))

    proc = subprocess.Popen(_cmd(tiny, killed, extra), cwd=REPO, env=process_env(RUN_GLUE_DEBUG_STEP_SLEEP="0.25"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (killed / "checkpoints" / "step_6").is_dir():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "all_results.json").exists()
    last_logged = max(r["step"] for r in read_log(killed))
    assert 6 <= last_logged < 12

    _finish(_cmd(tiny, killed, extra + ["--resume_from_checkpoint", "latest"]))
    assert _without_runtime(read_results(killed)) == _without_runtime(read_results(ref))
    assert read_log(killed) == read_log(ref)  # same losses, lrs, evals, budgets, Hessian stats, line for line
    weights = "model.safetensors" if case == "full_adamw" else "adapter_model.safetensors"
    a, b = load_file(ref / weights), load_file(killed / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if case == "vilora_ivon":
        assert (ref / "rank_pattern.json").read_text() == (killed / "rank_pattern.json").read_text()
        sa = torch.load(ref / "ivon_state.pt", weights_only=True)["params"]
        sb = torch.load(killed / "ivon_state.pt", weights_only=True)["params"]
        assert all(torch.equal(sa[n][k], sb[n][k]) for n in sa for k in sa[n])
    cfg = json.loads((killed / "run_config.json").read_text())
    assert cfg["resumed_from"].endswith("step_6") or cfg["resumed_from"].endswith("step_9")
