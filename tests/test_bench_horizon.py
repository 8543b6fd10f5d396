"""bench/ivon_horizon.py reads the same IVON statistics from a run's checkpoints as the script logs."""
from __future__ import annotations

import pytest
import torch

from _run_glue_utils import have_adapters, import_bench, make_tiny_model, read_log, write_tiny_glue

pytestmark = pytest.mark.skipif(not have_adapters(), reason="peft/ivon packages not available yet")


def test_checkpoint_statistics_equal_the_logged_ones(tmp_path):
    horizon = import_bench("ivon_horizon")
    import run_glue_no_trainer as rg
    model, glue = make_tiny_model(tmp_path / "model"), write_tiny_glue(tmp_path / "glue", "rte")
    out = tmp_path / "run"
    assert rg.main(["--model_name_or_path", str(model), "--task_name", "rte", "--glue_dir", str(glue),
                    "--output_dir", str(out), "--seed", "1", "--per_device_train_batch_size", "8",
                    "--max_train_steps", "6", "--apply_lora", "--lora_type", "vilora", "--adalora_init_r", "3",
                    "--adalora_target_r", "3", "--adalora_tinit", "1", "--adalora_tfinal", "1",
                    "--learning_rate", "0.5", "--checkpointing_steps", "3", "--eval_steps", "3",
                    "--eval_after_epochs", "0"]) == 0
    logged = {r["step"]: r for r in read_log(out) if "post_sigma_median" in r}
    for step in (3, 6):
        got = horizon.checkpoint_stats(out / "checkpoints" / f"step_{step}")["adapters"]
        want = logged[step]
        assert got["sigma_median"] == pytest.approx(want["post_sigma_median"], rel=1e-6)
        assert got["absmu_median"] == pytest.approx(want["post_absmu_median"], rel=1e-6)
        assert got["snr_median"] == pytest.approx(want["post_snr_median"], rel=1e-6)
        assert got["clip_fraction"] == pytest.approx(want["clip_fraction"], abs=1e-9)
        assert got["sigma_spread"] == pytest.approx(want["post_sigma_spread"], rel=1e-6)
        assert got["absmu_spread"] == pytest.approx(want["post_absmu_spread"], rel=1e-6) and got["absmu_spread"] > 1
        assert got["shift_rms"] == pytest.approx(want["mean_shift_rms"], rel=1e-5) and got["shift_rms"] > 0
    assert "| 6 | adapters |" in horizon.report(out)
    # The saved adapter and ivon_state.pt hold the state of the last checkpoint; with every triplet kept
    # (target_r = init_r) the final row is the step-6 row's posterior.
    final, last = horizon.final_stats(out), horizon.checkpoint_stats(out / "checkpoints" / "step_6")["adapters"]
    for key in ("hess_mean", "sigma_median", "sigma_spread", "absmu_median", "absmu_spread", "snr_median"):
        assert final[key] == pytest.approx(last[key], rel=1e-6), key
    assert "| final | adapters |" in horizon.report(out)


def test_a_run_without_ivon_is_one_line_and_status_2(tmp_path, capsys):
    horizon = import_bench("ivon_horizon")
    assert horizon.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither checkpoints/" in err
    ckpt = tmp_path / "adamw" / "checkpoints" / "step_1"  # an AdamW run's checkpoint
    ckpt.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, ckpt / "model.pt")
    torch.save({"param_groups": [{"lr": 1e-3}], "state": {}}, ckpt / "optimizer.pt")
    assert horizon.main([str(tmp_path / "adamw")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an IVON run" in err
