"""peft core: bad configurations fail at config or setup time with one clear ValueError."""
from __future__ import annotations

import pytest

from _peft_utils import tiny_bert, tiny_deberta
from peft import AdaLoraConfig, LoraConfig, PeftConfig, VILoraConfig, get_peft_model


def test_target_r_above_init_r():
    with pytest.raises(ValueError, match=r"target_r \(4\) must not exceed init_r \(3\)"):
        AdaLoraConfig(init_r=3, target_r=4)
    config = AdaLoraConfig(init_r=3, target_r=2)
    config.target_r = 5  # changed after construction: caught when the model is built
    with pytest.raises(ValueError, match="must not exceed init_r"):
        get_peft_model(tiny_deberta(), config)


def test_unknown_criterion_lists_valid_names():
    with pytest.raises(ValueError, match="SNR_mean_abs"):
        VILoraConfig(criterion="snr-typo")
    config = VILoraConfig(init_r=3, target_r=2)
    config.criterion = "nope"
    with pytest.raises(ValueError, match="nope"):
        get_peft_model(tiny_deberta(), config)


def test_orth_reg_weight():
    with pytest.raises(ValueError, match="orth_reg_weight must be >= 0"):
        AdaLoraConfig(orth_reg_weight=-0.1)
    assert AdaLoraConfig(orth_reg_weight=0.0).orth_reg_weight == 0.0


def test_target_modules_matching_nothing_lists_linear_names():
    with pytest.raises(ValueError, match=r"matched no module.*key_proj.*query_proj.*value_proj"):
        get_peft_model(tiny_deberta(), LoraConfig(target_modules=["q_lin"]))
    with pytest.raises(ValueError, match=r"matched no module.*query.*value"):
        get_peft_model(tiny_bert(), AdaLoraConfig(target_modules=r".*\.nothing", init_r=2, target_r=1))
    with pytest.raises(ValueError, match="only torch.nn.Linear"):
        get_peft_model(tiny_bert(), LoraConfig(target_modules=["LayerNorm"]))


def test_ranks_and_unsupported_options():
    for r in (-1, 0):
        with pytest.raises(ValueError, match="positive integer"):
            LoraConfig(r=r)
    with pytest.raises(ValueError, match="init_r must be a non-negative integer"):
        AdaLoraConfig(init_r=-1, target_r=0)
    with pytest.raises(ValueError, match="bias"):
        LoraConfig(bias="all")
    with pytest.raises(ValueError, match="use_dora"):
        LoraConfig(use_dora=True)
    with pytest.raises(ValueError, match="init_lora_weights"):
        AdaLoraConfig(init_lora_weights="gaussian")
    with pytest.raises(ValueError, match="beta1"):
        AdaLoraConfig(beta1=1.0)
    with pytest.raises(ValueError, match="task_type"):
        LoraConfig(task_type="SEQ_CLASSIFICATION")


def test_schedule_validation_needs_total_step():
    with pytest.raises(ValueError, match="total_step"):
        AdaLoraConfig(init_r=3, target_r=2).validate_schedule()
    with pytest.raises(ValueError, match="no budgeting phase"):
        AdaLoraConfig(init_r=3, target_r=2, tinit=8, tfinal=2, total_step=10).validate_schedule()
    AdaLoraConfig(init_r=3, target_r=2, tinit=2, tfinal=2, total_step=10).validate_schedule()


def test_no_default_targets_and_bad_config_files(tmp_path):
    model = tiny_deberta()
    model.config.model_type = "my-model"
    with pytest.raises(ValueError, match="no default target_modules"):
        get_peft_model(model, AdaLoraConfig(init_r=2, target_r=1))
    with pytest.raises(ValueError, match="no adapter_config.json"):
        PeftConfig.from_pretrained(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    with pytest.raises(ValueError, match="unsupported peft_type 'IA3'"):
        PeftConfig.from_pretrained(str(tmp_path))


def test_pathological_target_modules_regex_cannot_hang(monkeypatch):
    """'(.|.)*Z' backtracks exponentially in Python's re (2^50 paths on a 50-character module path); an adapter
    config from someone else must not hang the run: the match is bounded in time."""
    import time

    import peft.targets as targets
    start = time.perf_counter()
    with pytest.raises(ValueError, match="matched no module"):
        get_peft_model(tiny_deberta(), LoraConfig(target_modules=r"(.|.)*Z"))
    assert time.perf_counter() - start < 10
    monkeypatch.setattr(targets, "REGEX_TIMEOUT_S", 1e-9)  # a pattern the engine cannot finish in time
    with pytest.raises(ValueError, match="catastrophic backtracking"):
        get_peft_model(tiny_deberta(), LoraConfig(target_modules=r"(?:(.|..)*)*Z"))
    with pytest.raises(ValueError, match="not a valid regular expression"):
        get_peft_model(tiny_deberta(), LoraConfig(target_modules=r"(query"))
