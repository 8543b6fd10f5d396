"""The paper's own path: the sweep scripts' real table rows on a DeBERTa-v2 checkpoint stored in float16.

The Hub's microsoft/deberta-v3-base is stored in float16, and since transformers 5 `from_pretrained` keeps a
checkpoint's stored dtype unless told otherwise. Every method of the paper's table must still train in float32
(weights, adapters, classifier and optimizer state), as it did on transformers 4.40. The runs go through the
method scripts and scripts/launch.sh exactly as a user starts them, with the MODEL, GLUE_DIR and EXTRA_ARGS
knobs shrinking each row to a few updates.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _run_glue_utils import REPO, have_adapters, make_tiny_model, read_log, write_tiny_glue

# Each row shrunk to 3 updates of 8 examples; the budget phases and the custom schedule's constant phase too.
SHRINK = ("--max_train_steps 3 --max_length 32 --per_device_train_batch_size 8 --per_device_eval_batch_size 16 "
          "--adalora_tinit 1 --adalora_tfinal 1 --num_warmup_steps 1 --lr_schedule_const_epochs 0.25 "
          "--checkpointing_steps 3")
# script -> (tasks, the run folders it must produce). STS-B is the task whose table has every IVON row
# (full fine-tuning with IVON included); full fine-tuning with AdamW has no STS-B row, so it runs RTE.
SCRIPTS = {
    "full.sh": ("rte stsb", ["full/rank2/rte", "full_ivon/rank2/stsb"]),
    "lora_all.sh": ("stsb", ["lora_all/rank2/stsb"]),
    "adalora.sh": ("stsb", ["adalora/rank2/stsb"]),
    "adalora_ivon_clr.sh": ("stsb", ["adalora_ivon_clr/rank2/stsb"]),
    "vilora_clr.sh": ("stsb", ["vilora_clr/rank2/stsb"]),
    "vilora_clr_criterion.sh": ("stsb", [f"vilora_clr_criterion-{c}/rank2/stsb"
                                         for c in ("SNR_mean_abs", "SNR", "mean", "sigma")]),
}


@pytest.fixture(scope="module")
def float16_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_path")
    model = make_tiny_model(root / "model", dtype="float16")
    assert json.loads((model / "config.json").read_text())["dtype"] == "float16"
    assert all(t.dtype == torch.float16 for t in load_file(model / "model.safetensors").values())
    glue = root / "glue"
    for task in ("rte", "stsb"):
        write_tiny_glue(glue, task)
    return model, glue, root / "outputs"


def _float_tensors(obj):
    """Every floating-point tensor inside a (nested) state dict."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _float_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _float_tensors(v)]
    return []


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_table_rows_train_in_float32_from_a_float16_checkpoint(float16_world, script):
    if script != "full.sh" and not have_adapters():
        pytest.skip("peft/ivon packages not available yet")
    model, glue, root = float16_world
    tasks, runs = SCRIPTS[script]
    env = dict(os.environ, MODEL=str(model), GLUE_DIR=str(glue), OUTPUT_ROOT=str(root), TASKS=tasks, SEEDS="1",
               EXTRA_ARGS=SHRINK, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    res = subprocess.run(["bash", str(REPO / "scripts" / script)], capture_output=True, text=True, env=env,
                         timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for rel in runs:
        out = root / rel / "seed1"
        results = json.loads((out / "all_results.json").read_text())
        assert results["train_steps"] == 3
        assert all(r["train_loss"] == r["train_loss"] for r in read_log(out) if "train_loss" in r)  # no NaN
        ckpt = out / "checkpoints" / "step_3"
        weights = torch.load(ckpt / "model.pt", weights_only=True)
        optimizer = torch.load(ckpt / "optimizer.pt", weights_only=True)
        state = _float_tensors(optimizer)
        assert weights and state, rel
        assert {t.dtype for t in _float_tensors(weights)} == {torch.float32}, rel
        assert {t.dtype for t in state} == {torch.float32}, rel
        saved = out / ("model.safetensors" if rel.startswith("full") else "adapter_model.safetensors")
        assert {t.dtype for t in load_file(saved).values()} == {torch.float32}, rel
        if results["use_ivon"]:
            hess = [p["hess"] for p in torch.load(out / "ivon_state.pt", weights_only=True)["params"].values()]
            assert hess and {h.dtype for h in hess} == {torch.float32}, rel
