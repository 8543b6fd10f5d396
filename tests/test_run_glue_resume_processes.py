"""Resuming with another number of processes (docs/multi_gpu.md, "Resuming"): a checkpoint written by one process
resumes in two CPU processes (gloo) when the global batch is the same, the process without an RNG file saying
that it starts a fresh stream; with another global batch it is refused with one line and status 2.

AdaLoRA + AdamW on a model without dropout, so the 2-process continuation must end where the uninterrupted
1-process run ends (to float rounding, as the 2-vs-1 test in test_run_glue_distributed.py checks for whole runs).
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from _run_glue_utils import accelerate_launch, have_adapters, make_tiny_model, read_log, read_results, write_tiny_glue

pytestmark = pytest.mark.skipif(not have_adapters(), reason="peft/ivon packages not available yet")


def test_one_process_checkpoint_resumes_in_two_processes(tmp_path, capsys):
    import run_glue_no_trainer as rg  # the single-process runs go in-process (main(argv)); the 2-process one is launched
    model = make_tiny_model(tmp_path / "model", dropout=0.0)
    glue = write_tiny_glue(tmp_path / "glue", "rte", n_train=48, n_dev=15)
    common = ["--model_name_or_path", str(model), "--task_name", "rte", "--glue_dir", str(glue), "--seed", "3",
              "--max_train_steps", "12", "--checkpointing_steps", "6", "--eval_steps", "6", "--eval_after_epochs",
              "0", "--apply_lora", "--lora_type", "adalora", "--adalora_init_r", "3", "--adalora_target_r", "2",
              "--adalora_tinit", "2", "--adalora_tfinal", "3", "--adalora_delta_t", "1", "--learning_rate", "0.01"]
    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    assert rg.main(common + ["--per_device_train_batch_size", "8", "--output_dir", str(ref)]) == 0
    shutil.copytree(ref, resumed)
    (resumed / "all_results.json").unlink()
    shutil.rmtree(resumed / "checkpoints" / "step_12")  # as if killed between updates 6 and 12
    assert not (resumed / "checkpoints" / "step_6" / "rng_rank1.pt").exists()

    # another global batch (1 x 4 instead of 1 x 8) would put the epoch position on other examples: refused
    capsys.readouterr()
    assert rg.main(common + ["--per_device_train_batch_size", "4", "--output_dir", str(resumed),
                             "--resume_from_checkpoint", "latest"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "global batch of 8" in last and "is 4" in last and "resume with the same global batch" in last
    assert not (resumed / "all_results.json").exists()

    # the same global batch in 2 processes x 4: resumes, rank 1 starts a fresh RNG stream
    res = accelerate_launch(common + ["--per_device_train_batch_size", "4", "--output_dir", str(resumed),
                                "--resume_from_checkpoint", "latest"])
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-3000:]
    assert "resumed from" in res.stdout + res.stderr
    assert "has no rng_rank1.pt" in res.stderr and "process 1 continues with a fresh RNG stream" in res.stderr
    cfg = json.loads((resumed / "run_config.json").read_text())
    assert cfg["num_processes"] == 2 and cfg["total_train_batch_size"] == 8 and cfg["resumed_from"].endswith("step_6")

    # what the first 6 updates wrote is kept; the continuation ends where the uninterrupted run ends
    log_ref, log_res = read_log(ref), read_log(resumed)
    assert [r["step"] for r in log_res] == [r["step"] for r in log_ref] and log_res[-1]["step"] == 12
    assert log_res[:7] == log_ref[:7]  # updates 1-6 and the evaluation at 6, verbatim
    for a, b in zip(log_ref, log_res):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == (pytest.approx(a[k], abs=1e-5) if "loss" in k else a[k]), k
    a, b = read_results(ref), read_results(resumed)
    assert {k: v for k, v in b.items() if "loss" not in k and k != "train_runtime_s"} == \
        {k: v for k, v in a.items() if "loss" not in k and k != "train_runtime_s"}
    assert (resumed / "rank_pattern.json").read_text() == (ref / "rank_pattern.json").read_text()
    wa, wb = load_file(ref / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=0)
