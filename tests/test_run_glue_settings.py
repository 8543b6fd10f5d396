"""Every setting is checked before anything is loaded or written, by the rules of the library that takes it
(peft for adapters and budget schedules, ivon for IVON, torch for AdamW): one line, exit status 2, no output."""
from __future__ import annotations

import json

import pytest

from _run_glue_utils import have_adapters, make_tiny_model, write_tiny_glue
import run_glue_no_trainer as rg

pytestmark = pytest.mark.skipif(not have_adapters(), reason="peft/ivon packages not available yet")
ADALORA = ["--apply_lora", "--lora_type", "adalora", "--adalora_init_r", "3", "--adalora_target_r", "2",
           "--adalora_tinit", "1", "--adalora_tfinal", "1", "--adalora_delta_t", "1"]
VILORA = ["--apply_lora", "--lora_type", "vilora", *ADALORA[3:]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("settings")
    return make_tiny_model(root / "model"), write_tiny_glue(root / "glue", "rte")


def _refused(tiny, tmp_path, capsys, *argv, model=None) -> str:
    out = tmp_path / "never"
    code = rg.main(["--model_name_or_path", str(model or tiny[0]), "--task_name", "rte", "--glue_dir", str(tiny[1]),
                    "--output_dir", str(out), "--seed", "1", "--per_device_train_batch_size", "8",
                    "--max_train_steps", "6", *map(str, argv)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err[-3:]
    assert "Traceback" not in "\n".join(err) and err[-1].startswith("run_glue_no_trainer.py: error: "), err[-3:]
    assert not out.exists(), "bad input must not write to output_dir"
    return err[-1]


CASES = [  # (flags, what the one line must say)
    (["--learning_rate", "nan"], "--learning_rate must be a finite number, got nan"),
    (["--weight_decay", "inf"], "--weight_decay must be a finite number"),
    (["--use_ivon", "--ivon_ess", "inf"], "--ivon_ess must be a finite number"),
    (["--learning_rate", "-1"], "Invalid learning rate"),                          # torch's AdamW rule
    (["--weight_decay", "-0.1"], "Invalid weight_decay"),
    (["--use_ivon", "--ivon_beta2", "1.5"], "IVON: invalid beta2: 1.5"),            # ivon's rules
    (["--use_ivon", "--ivon_clip_radius", "0"], "IVON: invalid clip_radius"),
    (["--use_ivon", "--ivon_hess_init", "-1"], "IVON: invalid hess_init"),
    (["--use_ivon", "--use_custom_lr_schedule", "--lr_schedule_second_lr", "-0.5"],
     "--lr_schedule_second_lr: IVON: invalid lr: -0.5"),
    (["--apply_lora", "--lora_r", "0"], "r must be a positive integer"),        # peft's rules
    (["--apply_lora", "--lora_r", "2", "--lora_dropout", "1.5"], "lora_dropout must lie in [0, 1)"),
    (["--apply_lora", "--lora_r", "2", "--lora_alpha", "0"], "lora_alpha must be a number > 0"),
    ([*ADALORA[:5], "--adalora_target_r", "4"], "target_r (4) must not exceed init_r (3)"),
    ([*ADALORA, "--adalora_delta_t", "0"], "deltaT must be >= 1"),
    ([*ADALORA, "--adalora_tinit", "-2"], "tinit and tfinal must be >= 0"),
    ([*ADALORA, "--adalora_tinit", "5"], "AdaLoRA schedule impossible"),
    ([*VILORA, "--adalora_orth_reg_weight", "-1"], "orth_reg_weight must be >= 0"),
    (["--apply_lora", "--lora_r", "2", "--lora_modules", "q_lin,v_lin"], "matched no module"),
    (["--max_length", "1000"], "--max_length 1000 exceeds the 512 positions"),
]


@pytest.mark.parametrize("flags,message", CASES, ids=[" ".join(c[0][-2:]) for c in CASES])
def test_bad_setting_is_one_line_before_anything_is_written(tiny, tmp_path, capsys, flags, message):
    assert message in _refused(tiny, tmp_path, capsys, *flags)


def test_missing_model_path(tiny, tmp_path, capsys):
    line = _refused(tiny, tmp_path, capsys, model=tmp_path / "no_such_model")
    assert "--model_name_or_path" in line and "cannot load its config" in line


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapter") / "run"
    assert rg.main(["--model_name_or_path", str(tiny[0]), "--task_name", "rte", "--glue_dir", str(tiny[1]),
                    "--output_dir", str(out), "--seed", "1", "--per_device_train_batch_size", "8",
                    "--max_train_steps", "4", *ADALORA]) == 0
    return out


@pytest.mark.parametrize("damage,message", [
    ("config_not_json", "adapter_config.json is not a valid adapter config"),
    ("config_unknown_type", "unsupported peft_type"),
    ("config_list", "adapter_config.json is not a valid adapter config"),
    ("weights_missing", "cannot load the adapter"),
    ("weights_empty", "cannot load the adapter"),
])
def test_malformed_adapter_folder(tiny, adapter, tmp_path, capsys, damage, message):
    import shutil
    folder = tmp_path / "adapter"
    shutil.copytree(adapter, folder)
    config = folder / "adapter_config.json"
    if damage == "config_not_json":
        config.write_text("{not json")
    elif damage == "config_unknown_type":
        config.write_text(json.dumps(json.loads(config.read_text()) | {"peft_type": "PREFIX_TUNING"}))
    elif damage == "config_list":
        config.write_text("[]")
    elif damage == "weights_missing":
        (folder / "adapter_model.safetensors").unlink()
    else:
        (folder / "adapter_model.safetensors").write_bytes(b"")
    assert message in _refused(tiny, tmp_path, capsys, "--apply_lora", "--lora_path", folder, "--eval_only")


def _tiny_mpnet(tiny_model, path):
    """A 1-layer MPNet (a model type with no default target modules) with the tiny model's WordPiece tokenizer."""
    import shutil

    import torch
    from transformers import MPNetConfig, MPNetModel
    shutil.copytree(tiny_model, path, ignore=shutil.ignore_patterns("*.safetensors", "config.json"))
    vocab = len((path / "vocab.txt").read_text().split())
    torch.manual_seed(0)
    MPNetModel(MPNetConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130, pad_token_id=0)).save_pretrained(path)
    return path


def test_a_model_type_without_default_targets_asks_for_lora_modules(tiny, tmp_path, capsys):
    model = _tiny_mpnet(tiny[0], tmp_path / "mpnet")
    line = _refused(tiny, tmp_path, capsys, *ADALORA, model=model)
    assert "no default target_modules for model_type 'mpnet'" in line and line.endswith("(here: --lora_modules)")
    out = tmp_path / "run"
    assert rg.main(["--model_name_or_path", str(model), "--task_name", "rte", "--glue_dir", str(tiny[1]),
                    "--output_dir", str(out), "--seed", "1", "--per_device_train_batch_size", "8",
                    "--max_train_steps", "6", *ADALORA, "--lora_modules", "q,v"]) == 0
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert sorted(targets) == ["q", "v"]
