"""bench/adapter_share.py: a run's adapter re-evaluated as trained and with its low-rank updates removed."""
from __future__ import annotations

import pytest
from safetensors.torch import load_file

from _run_glue_utils import have_adapters, import_bench, make_tiny_model, read_results, write_tiny_glue
import run_glue_no_trainer as rg

pytestmark = pytest.mark.skipif(not have_adapters(), reason="peft/ivon packages not available yet")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("share")
    model, glue = make_tiny_model(root / "model"), write_tiny_glue(root / "glue", "rte")
    base = ["--model_name_or_path", str(model), "--task_name", "rte", "--glue_dir", str(glue), "--seed", "5",
            "--per_device_train_batch_size", "8", "--max_train_steps", "6", "--apply_lora"]
    lora = root / "lora"
    assert rg.main(base + ["--output_dir", str(lora), "--lora_type", "lora", "--lora_r", "2",
                           "--learning_rate", "5e-2"]) == 0
    vilora = root / "vilora"
    assert rg.main(base + ["--output_dir", str(vilora), "--lora_type", "vilora", "--use_ivon", "--learning_rate", "0.1",
                           "--adalora_init_r", "3", "--adalora_target_r", "2", "--adalora_tinit", "1",
                           "--adalora_tfinal", "2", "--adalora_delta_t", "1"]) == 0
    return glue, lora, vilora


@pytest.mark.parametrize("kind,suffix", [("lora", ".lora_B.weight"), ("vilora", ".lora_E")])
def test_head_only_zeroes_exactly_the_low_rank_updates(runs, tmp_path, kind, suffix):
    share = import_bench("adapter_share")
    run = runs[1] if kind == "lora" else runs[2]
    n = share.head_only(run, tmp_path)
    before = load_file(str(run / "adapter_model.safetensors"))
    after = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert before.keys() == after.keys() and n == sum(k.endswith(suffix) for k in before) > 0
    assert any(before[k].abs().sum() > 0 for k in before if k.endswith(suffix))
    for k in before:
        if k.endswith(suffix):
            assert after[k].shape == before[k].shape and not after[k].any()
        else:  # the head and the other adapter factors are the trained ones
            assert after[k].equal(before[k])
    assert any("classifier" in k for k in before)


def test_as_trained_is_the_runs_own_result(runs, capsys):
    glue, lora, vilora = runs
    share = import_bench("adapter_share")
    assert share.main([str(lora), str(vilora), "--glue_dir", str(glue)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {lora.parent}")]
    assert len(rows) == 2
    for row, run in zip(rows, (lora, vilora)):
        trained = float(row.split("|")[3])
        assert trained == pytest.approx(100 * read_results(run)["eval_accuracy"], abs=0.005)


def test_a_run_without_an_adapter_is_refused_before_any_evaluation(runs, tmp_path, capsys):
    glue, lora, _ = runs
    share = import_bench("adapter_share")
    assert share.main([str(lora), str(tmp_path), "--glue_dir", str(glue)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "not a finished adapter run" in captured.err


def test_a_broken_run_config_is_one_line(runs, tmp_path, capsys):
    import shutil

    glue, lora, _ = runs
    broken = tmp_path / "broken"
    shutil.copytree(lora, broken)
    (broken / "run_config.json").write_text("{not json")
    share = import_bench("adapter_share")
    assert share.main([str(broken), "--glue_dir", str(glue)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run_config.json" in err
