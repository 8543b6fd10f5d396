"""Opt-in: adapter files travel both ways between this ``peft`` and Hugging Face PEFT 0.21.2.

Skipped unless ``PEFT_INTEROP=1``. Hugging Face PEFT also imports as ``peft``, so it lives in its own
virtualenv (default ``.venv-hfpeft``, or ``$HF_PEFT_PYTHON``); see peft/README.md for building it.
Each case runs ``tests/interop/check_hf_peft.py save`` with one interpreter and ``check`` with the other.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "interop" / "check_hf_peft.py"
HF_PYTHON = Path(os.environ.get("HF_PEFT_PYTHON", REPO / ".venv-hfpeft" / "bin" / "python"))

pytestmark = pytest.mark.skipif(os.environ.get("PEFT_INTEROP") != "1",
                                reason="interop with Hugging Face PEFT is opt-in: set PEFT_INTEROP=1")


def _run(python: Path, *args: str) -> str:
    env = dict(os.environ, PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([str(python), str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300)
    summary = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert proc.returncode == 0, "\n".join(summary) + "\n" + proc.stderr[-3000:]
    return summary[-1]


@pytest.fixture(scope="module")
def hf_python() -> Path:
    if not HF_PYTHON.exists():
        pytest.skip(f"no Hugging Face PEFT interpreter at {HF_PYTHON} (set HF_PEFT_PYTHON)")
    return HF_PYTHON


@pytest.mark.parametrize("kind", ["lora", "adalora", "vilora"])
def test_our_adapters_load_in_hf_peft(kind, hf_python, tmp_path):
    _run(Path(sys.executable), "save", "--kind", kind, "--dir", str(tmp_path))
    assert "-> OK" in _run(hf_python, "check", "--dir", str(tmp_path))


@pytest.mark.parametrize("kind", ["lora", "adalora"])
def test_hf_peft_adapters_load_here(kind, hf_python, tmp_path):
    _run(hf_python, "save", "--kind", kind, "--dir", str(tmp_path))
    assert "-> OK" in _run(Path(sys.executable), "check", "--dir", str(tmp_path))


@pytest.mark.parametrize("kind", ["lora", "adalora"])
def test_peer_script_trains_hf_peft_adapters_through_our_script(kind, hf_python, tmp_path):
    """bench/peer_hf_peft.py runs run_glue_no_trainer.py with Hugging Face's adapters (the run records it)."""
    import json

    sys.path.insert(0, str(REPO / "tests"))
    from _run_glue_utils import make_tiny_model, write_tiny_glue
    model, glue = make_tiny_model(tmp_path / "model"), write_tiny_glue(tmp_path / "glue", "rte")
    out = tmp_path / "out"
    extra = ["--lora_r", "2"] if kind == "lora" else \
        ["--adalora_init_r", "3", "--adalora_target_r", "2", "--adalora_tinit", "1", "--adalora_tfinal", "2"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([str(hf_python), str(REPO / "bench" / "peer_hf_peft.py"), "--model_name_or_path",
                           str(model), "--task_name", "rte", "--glue_dir", str(glue), "--output_dir", str(out),
                           "--seed", "1", "--per_device_train_batch_size", "8", "--max_train_steps", "6",
                           "--learning_rate", "1e-3", "--apply_lora", "--lora_type", kind, *extra],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "run_config.json").read_text())["versions"]["peft"] == "0.21.2"
    results = json.loads((out / "all_results.json").read_text())
    assert results["train_steps"] == 6 and results["lora_type"] == kind
    if kind == "adalora":
        assert results["kept_ranks"] == 2 * 13  # target_r x the 13 adapted matrices of the tiny DeBERTa
