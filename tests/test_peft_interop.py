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
