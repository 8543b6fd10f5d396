"""peft.rank_pattern: pattern keys, the kept slices of A/E/B, and the configs' method and criterion."""
import pytest
import torch

import peft
from peft.rank_pattern import (adapter_tensor_module, keep_triplets, masks_by_module, pattern_module_path,
                               strip_adapter_name)


def test_pattern_keys_with_and_without_adapter_name():
    assert pattern_module_path("enc.0.query.lora_E.default", "default") == "enc.0.query"
    assert pattern_module_path("enc.0.query.lora_E", "default") == "enc.0.query"
    with pytest.raises(ValueError, match="does not end in '.lora_E'"):
        pattern_module_path("enc.0.query.lora_A", "default")
    assert strip_adapter_name("x.lora_E.default", "default") == "x.lora_E"
    assert strip_adapter_name("x.lora_E", "default") == "x.lora_E"
    masks = masks_by_module({"a.lora_E.default": torch.tensor([True, False]), "b.lora_E": [1, 0, 1]})
    assert masks == {"a": [True, False], "b": [True, False, True]}
    assert masks_by_module(None) == {}


def test_adapter_tensor_names():
    assert adapter_tensor_module("base_model.model.enc.0.query.lora_B.default") == "enc.0.query"
    assert adapter_tensor_module("enc.0.query.lora_A.default") == "enc.0.query"
    assert adapter_tensor_module("base_model.model.enc.0.query.lora_A.weight") is None
    assert adapter_tensor_module("base_model.model.classifier.weight") is None


def test_keep_triplets_cuts_rows_of_a_and_e_and_columns_of_b():
    mask = [True, False, True]
    a, e, b = torch.arange(6.).view(3, 2), torch.arange(3.).view(3, 1), torch.arange(12.).view(4, 3)
    assert keep_triplets("x.lora_A.default", a, mask).tolist() == [[0., 1.], [4., 5.]]
    assert keep_triplets("x.lora_E.default", e, mask).tolist() == [[0.], [2.]]
    assert keep_triplets("x.lora_B.default", b, mask).tolist() == [[0., 2.], [3., 5.], [6., 8.], [9., 11.]]
    kept = keep_triplets("x.lora_A.default", a, mask)
    assert keep_triplets("x.lora_A.default", kept, mask) is kept  # already cut: passes through
    with pytest.raises(ValueError, match="fits neither init_r=3 nor the kept rank 2"):
        keep_triplets("x.lora_A.default", torch.zeros(1, 2), mask)


def test_config_method_and_importance_criterion():
    cfgs = [peft.LoraConfig(), peft.AdaLoraConfig(), peft.VILoraConfig(criterion="SNR")]
    assert [c.method for c in cfgs] == ["lora", "adalora", "vilora"]
    assert [c.importance_criterion for c in cfgs] == [None, "sensitivity", "SNR"]
    loaded = peft.PeftConfig.from_dict(peft.VILoraConfig(total_step=10).to_file_dict())  # saved as ADALORA
    assert loaded.method == "vilora" and loaded.importance_criterion == "SNR_mean_abs"
