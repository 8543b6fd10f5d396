"""peft core: adapter files (keys, shapes, JSON), save -> load identity, foreign files, loading modes."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from _peft_utils import HIDDEN, INTERMEDIATE, batch, logits, perturb_adapter, tiny_bert, tiny_deberta
from peft import (AdaLoraConfig, AdaLoraModel, LoraConfig, PeftConfig, PeftModel, VILoraConfig, VILoraModel,
                  get_peft_model)

LORA_KEYS = {
    "alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "fan_in_fan_out", "inference_mode",
    "init_lora_weights", "layer_replication", "layers_pattern", "layers_to_transform", "loftq_config", "lora_alpha",
    "lora_dropout", "megatron_config", "megatron_core", "modules_to_save", "peft_type", "r", "rank_pattern",
    "revision", "target_modules", "task_type", "use_dora", "use_rslora",
}
ADALORA_KEYS = LORA_KEYS | {"beta1", "beta2", "deltaT", "init_r", "orth_reg_weight", "target_r", "tfinal", "tinit",
                            "total_step"}
PREFIX = "base_model.model.deberta.encoder.layer."


def ada(cls=AdaLoraConfig, **kw):
    return cls(task_type="SEQ_CLS", init_r=3, target_r=2, lora_alpha=16, total_step=10, **kw)


def prune_by_hand(model, pattern: dict[str, list[bool]]) -> None:
    """Set a rank pattern as the allocator would: adapter-suffixed keys, masked E entries zeroed."""
    config = model.peft_config["default"]
    config.rank_pattern = {f"{path}.lora_E.default": mask for path, mask in pattern.items()}
    layers = dict(model.base_model.adapter_layers())
    with torch.no_grad():
        for path, mask in pattern.items():
            layers[path].lora_E["default"][~torch.tensor(mask)] = 0.0


def read_json(path):
    with open(path) as fh:
        return json.load(fh)


# ---------------------------------------------------------------------------------------------- LoRA
def test_lora_files_and_round_trip(tmp_path):
    model = get_peft_model(tiny_deberta(), LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4))
    perturb_adapter(model)
    inputs = batch()
    ref = logits(model, inputs)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json",
                                                         "adapter_model.safetensors"]
    text = (tmp_path / "adapter_config.json").read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True)
    assert set(data) == LORA_KEYS
    assert data["peft_type"] == "LORA" and data["inference_mode"] is True and data["rank_pattern"] == {}
    assert data["modules_to_save"] == ["classifier", "score"]
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as fh:
        assert fh.metadata() == {"format": "pt"}
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    assert shapes[f"{PREFIX}0.attention.self.query_proj.lora_A.weight"] == (2, HIDDEN)
    assert shapes[f"{PREFIX}0.attention.self.query_proj.lora_B.weight"] == (HIDDEN, 2)
    assert shapes["base_model.model.classifier.weight"] == (2, HIDDEN)
    assert len(shapes) == 2 * 2 * 2 + 2
    assert not model.peft_config["default"].inference_mode  # saving did not touch the live config

    loaded = PeftModel.from_pretrained(tiny_deberta(), str(tmp_path))
    assert torch.equal(logits(loaded, inputs), ref)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_bert_lora_bin_round_trip(tmp_path):
    model = get_peft_model(tiny_bert(), LoraConfig(task_type="SEQ_CLS", r=2))
    perturb_adapter(model)
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").exists()
    loaded = PeftModel.from_pretrained(tiny_bert(), str(tmp_path), is_trainable=True)
    assert torch.equal(logits(loaded, batch()), logits(model, batch()))
    assert loaded.get_nb_trainable_parameters() == model.get_nb_trainable_parameters()


# ---------------------------------------------------------------------------------------------- AdaLoRA
def test_adalora_files_with_pruned_modules(tmp_path):
    model = get_peft_model(tiny_deberta(), ada())
    perturb_adapter(model)
    layers = [p for p, _ in model.base_model.adapter_layers()]
    pattern = {path: [True, False, True] for path in layers}
    pattern["deberta.encoder.layer.1.intermediate.dense"] = [False, False, False]
    pattern["pooler.dense"] = [True, True, True]
    prune_by_hand(model, pattern)
    live_pattern = dict(model.peft_config["default"].rank_pattern)
    ref = logits(model, batch())
    model.save_pretrained(tmp_path)

    data = read_json(tmp_path / "adapter_config.json")
    assert set(data) == ADALORA_KEYS
    assert data["peft_type"] == "ADALORA" and data["target_modules"] == ["query_proj", "key_proj", "value_proj",
                                                                         "dense"]
    assert data["rank_pattern"] == {f"{p}.lora_E": m for p, m in pattern.items()}
    assert model.peft_config["default"].rank_pattern == live_pattern  # live keys keep ".default"

    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    inter, q = f"{PREFIX}1.intermediate.dense", f"{PREFIX}0.attention.self.query_proj"
    assert tensors[f"{inter}.lora_A"].shape == (0, HIDDEN)
    assert tensors[f"{inter}.lora_B"].shape == (INTERMEDIATE, 0) and tensors[f"{inter}.lora_E"].shape == (0, 1)
    assert tensors[f"{q}.lora_A"].shape == (2, HIDDEN) and tensors[f"{q}.lora_B"].shape == (HIDDEN, 2)
    assert tensors["base_model.model.pooler.dense.lora_E"].shape == (3, 1)
    assert not any("ranknum" in k or "default" in k for k in tensors)
    assert len(tensors) == 3 * 13 + 2

    loaded = PeftModel.from_pretrained(tiny_deberta(), str(tmp_path))
    assert isinstance(loaded.base_model, AdaLoraModel) and loaded.base_model.rank_allocator is None
    assert torch.equal(logits(loaded, batch()), ref)
    layer = loaded.base_model.model.deberta.encoder.layer[0].attention.self.query_proj
    assert layer.lora_A["default"].shape == (2, HIDDEN) and layer.ranknum["default"].item() == 3.0
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(RuntimeError, match="inference mode"):
        loaded.base_model.allocator_state_dict()
    # saving the resized model again gives the same files
    loaded.save_pretrained(tmp_path / "again")
    again = load_file(str(tmp_path / "again" / "adapter_model.safetensors"))
    assert again.keys() == tensors.keys() and all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_adalora_without_pattern_saves_full_rank(tmp_path):
    model = get_peft_model(tiny_deberta(), ada())
    model.save_pretrained(tmp_path)
    assert read_json(tmp_path / "adapter_config.json")["rank_pattern"] is None
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert tensors[f"{PREFIX}0.output.dense.lora_A"].shape == (3, INTERMEDIATE)
    loaded = PeftModel.from_pretrained(tiny_deberta(), str(tmp_path), is_trainable=True)
    assert torch.equal(logits(loaded, batch()), logits(model, batch()))
    assert loaded.base_model.rank_allocator is not None


def test_vilora_files_and_round_trip(tmp_path):
    model = get_peft_model(tiny_deberta(), ada(VILoraConfig, criterion="SNR"))
    perturb_adapter(model)
    prune_by_hand(model, {"pooler.dense": [False] * 3, "deberta.encoder.layer.0.intermediate.dense": [True, False, True]})
    ref = logits(model, batch())
    model.save_pretrained(tmp_path)
    data = read_json(tmp_path / "adapter_config.json")
    assert set(data) == ADALORA_KEYS | {"criterion"}
    assert data["peft_type"] == "ADALORA" and data["criterion"] == "SNR"
    config = PeftConfig.from_pretrained(str(tmp_path))
    assert isinstance(config, VILoraConfig) and config.criterion == "SNR"
    loaded = PeftModel.from_pretrained(tiny_deberta(), str(tmp_path))
    assert isinstance(loaded.base_model, VILoraModel)
    assert torch.equal(logits(loaded, batch()), ref)
    # the paper's fork wrote "VILORA"
    data["peft_type"] = "VILORA"
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    assert isinstance(PeftConfig.from_pretrained(str(tmp_path)), VILoraConfig)
    assert torch.equal(logits(PeftModel.from_pretrained(tiny_deberta(), str(tmp_path)), batch()), ref)


def test_keys_with_adapter_name_and_foreign_json_keys(tmp_path):
    model = get_peft_model(tiny_deberta(), ada())
    perturb_adapter(model)
    prune_by_hand(model, {"pooler.dense": [True, False, True]})
    ref = logits(model, batch())
    model.save_pretrained(tmp_path)
    # rewrite keys in the in-memory style (".lora_A.default") and add keys newer PEFT writes
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    renamed = {(k + ".default" if ".lora_" in k else k): v for k, v in tensors.items()}
    save_file(renamed, str(tmp_path / "adapter_model.safetensors"), metadata={"format": "pt"})
    data = read_json(tmp_path / "adapter_config.json")
    data.update(peft_version="0.21.2", exclude_modules=None, lora_bias=False, target_parameters=None,
                trainable_token_indices=None, use_qalora=False, qalora_group_size=16, ensure_weight_tying=False,
                eva_config=None, target_modules=sorted(data["target_modules"]))
    data["rank_pattern"] = {"pooler.dense.lora_E.default": [True, False, True]}
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    loaded = PeftModel.from_pretrained(tiny_deberta(), str(tmp_path))
    assert torch.equal(logits(loaded, batch()), ref)
    data["use_dora"] = True
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="use_dora"):
        PeftConfig.from_pretrained(str(tmp_path))
    data["use_dora"], data["exclude_modules"] = False, ["pooler"]
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="exclude_modules"):
        PeftConfig.from_pretrained(str(tmp_path))


def test_continue_training_from_saved_adapter(tmp_path):
    """The script's --lora_path flow: config from the folder, get_peft_model, load_adapter(is_trainable)."""
    model = get_peft_model(tiny_deberta(), ada())
    perturb_adapter(model)
    prune_by_hand(model, {"pooler.dense": [False, True, True]})
    model.save_pretrained(tmp_path)
    config = PeftConfig.from_pretrained(str(tmp_path), inference_mode=False)
    resumed = get_peft_model(tiny_deberta(), config)
    resumed.load_adapter(str(tmp_path), "default", is_trainable=True)
    assert torch.equal(logits(resumed, batch()), logits(model, batch()))
    pooler = resumed.base_model.model.pooler.dense
    assert pooler.lora_E["default"].shape == (2, 1) and pooler.lora_E["default"].requires_grad
    assert resumed.base_model.rank_allocator is not None
    with pytest.raises(ValueError, match="one adapter"):
        resumed.load_adapter(str(tmp_path), "other")


def test_loading_into_the_wrong_model_fails(tmp_path):
    model = get_peft_model(tiny_deberta(), LoraConfig(task_type="SEQ_CLS", r=2))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="LORA adapter"):
        get_peft_model(tiny_deberta(), ada()).load_adapter(str(tmp_path), "default")
    config = PeftConfig.from_pretrained(str(tmp_path))
    wrong = get_peft_model(tiny_deberta(), LoraConfig(task_type="SEQ_CLS", r=3))
    with pytest.raises(ValueError, match="shapes do not match"):
        wrong.load_adapter(str(tmp_path), "default")
    assert config.r == 2


def test_rank_one_modules_match_to_float_rounding(tmp_path):
    """Keeping 1 of 3 triplets turns a matrix product into a matrix-vector product, whose BLAS kernel sums in
    another order: logits then agree to ~1 ulp, not bit for bit (ranks 0, 2 and 3 are bit-exact above)."""
    model = get_peft_model(tiny_deberta(), ada())
    perturb_adapter(model)
    prune_by_hand(model, {p: [False, True, False] for p, _ in model.base_model.adapter_layers()})
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_deberta(), str(tmp_path))
    assert torch.allclose(logits(loaded, batch()), logits(model, batch()), rtol=0, atol=1e-6)
