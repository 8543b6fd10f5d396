"""peft core: layer structure, initialisation, forward/merge math, orthogonal penalty, heads, passthrough."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from _peft_utils import HIDDEN, INTERMEDIATE, batch, logits, perturb_adapter, tiny_bert, tiny_deberta
from peft import (AdaLoraConfig, AdaLoraModel, LoraConfig, LoraLinear, PeftModelForSequenceClassification,
                  SVDLinear, VILoraConfig, VILoraModel, get_peft_model)
from peft.adalora import orthogonal_penalty


def ada(**kw) -> AdaLoraConfig:
    kw.setdefault("task_type", "SEQ_CLS")
    kw.setdefault("init_r", 3)
    kw.setdefault("target_r", 2)
    kw.setdefault("lora_alpha", 16)
    return AdaLoraConfig(**kw)


# ---------------------------------------------------------------------------------------------- structure
def test_adalora_parameter_names_shapes_and_order():
    model = get_peft_model(tiny_deberta(), ada())
    layers = dict(model.base_model.adapter_layers())
    # 6 matrices per layer + pooler.dense (PEFT's deberta-v2 default "dense" matches the pooler too)
    assert len(layers) == 6 * 2 + 1
    assert "pooler.dense" in layers and "classifier" not in layers
    names = [n for n, _ in model.named_parameters() if ".layer.0.intermediate.dense." in n]
    prefix = "base_model.model.deberta.encoder.layer.0.intermediate.dense."
    assert names == [prefix + s for s in ("base_layer.weight", "base_layer.bias", "lora_A.default",
                                          "lora_B.default", "lora_E.default", "ranknum.default")]
    params = dict(model.named_parameters())
    shapes = {
        "intermediate.dense": (HIDDEN, INTERMEDIATE),
        "output.dense": (INTERMEDIATE, HIDDEN),
        "attention.self.query_proj": (HIDDEN, HIDDEN),
    }
    for suffix, (fan_in, fan_out) in shapes.items():
        p = f"base_model.model.deberta.encoder.layer.1.{suffix}"
        assert params[p + ".lora_A.default"].shape == (3, fan_in)
        assert params[p + ".lora_B.default"].shape == (fan_out, 3)
        assert params[p + ".lora_E.default"].shape == (3, 1)
        ranknum = params[p + ".ranknum.default"]
        assert ranknum.shape == (1,) and ranknum.item() == 3.0 and not ranknum.requires_grad
        assert not params[p + ".base_layer.weight"].requires_grad
    assert isinstance(layers["pooler.dense"], SVDLinear)


def test_module_count_formula_6L_plus_1():
    for n_layers in (1, 2, 3):
        model = get_peft_model(tiny_deberta(num_layers=n_layers), ada())
        assert len(list(model.base_model.adapter_layers())) == 6 * n_layers + 1


def test_deberta_v3_base_numbers_on_meta_device():
    from transformers import AutoModelForSequenceClassification, DebertaV2Config

    cfg = DebertaV2Config(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072, relative_attention=True, pos_att_type=["p2c", "c2p"],
                          position_buckets=256, max_relative_positions=-1, norm_rel_ebd="layer_norm",
                          share_att_key=True, pooler_hidden_size=768, num_labels=2)
    with torch.device("meta"):
        base = AutoModelForSequenceClassification.from_config(cfg)
    model = get_peft_model(base, ada())
    assert len(list(model.base_model.adapter_layers())) == 73
    assert model.get_nb_trainable_parameters()[0] == 504_029  # PEFT 0.11's count, 2-label head
    assert (model.base_model.rank_allocator.init_bgt, model.base_model.rank_allocator.target_bgt) == (219, 146)


def test_lora_names_defaults_and_bert():
    model = get_peft_model(tiny_deberta(), LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8))
    assert model.peft_config["default"].target_modules == ["query_proj", "value_proj"]
    layer = model.base_model.model.deberta.encoder.layer[0].attention.self.query_proj
    assert isinstance(layer, LoraLinear) and layer.scaling["default"] == 2.0
    keys = [k for k in model.state_dict() if "layer.0.attention.self.query_proj.lora" in k]
    assert keys == [f"base_model.model.deberta.encoder.layer.0.attention.self.query_proj.lora_{x}.default.weight"
                    for x in "AB"]
    assert torch.count_nonzero(layer.lora_B["default"].weight) == 0
    bert = get_peft_model(tiny_bert(), ada())
    assert sorted(p for p, _ in bert.base_model.adapter_layers()) == sorted(
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value"))


def test_seq_cls_head_is_wrapped_trained_not_adapted():
    model = get_peft_model(tiny_deberta(), ada())
    assert model.peft_config["default"].modules_to_save == ["classifier", "score"]
    params = dict(model.named_parameters())
    assert params["base_model.model.classifier.modules_to_save.default.weight"].requires_grad
    assert not params["base_model.model.classifier.original_module.weight"].requires_grad
    assert not params["base_model.model.pooler.dense.base_layer.weight"].requires_grad
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert all(("lora_" in n) or ("modules_to_save" in n) for n in trainable)
    expected = 3 * (4 * (HIDDEN + HIDDEN + 1) + 2 * (HIDDEN + INTERMEDIATE + 1)) * 2 + 3 * (2 * HIDDEN + 1)
    assert model.get_nb_trainable_parameters()[0] == expected + HIDDEN * 2 + 2
    bert = get_peft_model(tiny_bert(), LoraConfig(task_type="SEQ_CLS", r=2))
    assert "bert.pooler.dense" not in dict(bert.base_model.adapter_layers())
    assert dict(bert.named_parameters())["base_model.model.classifier.modules_to_save.default.bias"].requires_grad


def test_modules_to_save_targets_are_not_injected():
    # A roberta-like head: "classifier.dense" matches the "dense" target but lies under modules_to_save.
    base = tiny_deberta()
    base.classifier = nn.Sequential()
    base.classifier.add_module("dense", nn.Linear(HIDDEN, HIDDEN))
    base.classifier.add_module("out_proj", nn.Linear(HIDDEN, 2))
    base.config.num_labels = 2
    model = get_peft_model(base, ada())
    assert not any(p.startswith("classifier") for p, _ in model.base_model.adapter_layers())
    assert dict(model.named_parameters())["base_model.model.classifier.modules_to_save.default.dense.weight"].requires_grad


def test_passthrough_and_kwargs():
    model = get_peft_model(tiny_bert(), LoraConfig(task_type="SEQ_CLS", r=2))
    assert model.device == torch.device("cpu")
    assert model.config.model_type == "bert"
    assert callable(model.gradient_checkpointing_enable)
    inputs = batch()
    out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                token_type_ids=torch.zeros_like(inputs["input_ids"]), labels=inputs["labels"])
    assert out.logits.shape == (3, 2) and out.loss.ndim == 0
    assert isinstance(model, PeftModelForSequenceClassification)


# ---------------------------------------------------------------------------------------------- init
def _svd_layer(r: int, init="default", fan_in: int = 5, fan_out: int = 4, alpha: float = 32,
               seed: int | None = None) -> SVDLinear:
    kwargs = {} if init == "default" else {"init_lora_weights": init}
    base = nn.Linear(fan_in, fan_out)
    if seed is not None:
        torch.manual_seed(seed)
    return SVDLinear(base, "default", r=r, lora_alpha=alpha, **kwargs)


def test_rng_order_matches_peft_0_11_and_zero_e():
    for init in ("default", "zero_e"):
        layer = _svd_layer(3, init, seed=7)
        torch.manual_seed(7)
        for shape in ((3, 5), (3, 1), (4, 3), (1,)):
            torch.randn(*shape)  # placeholders A, E, B, ranknum (PEFT 0.11's order)
        E = torch.zeros(3, 1) if init == "zero_e" else torch.empty(3, 1).normal_(0, 0.02)
        A = torch.empty(3, 5).normal_(0, 0.02)
        B = torch.empty(4, 3).normal_(0, 0.02)
        assert torch.equal(layer.lora_E["default"], E)
        assert torch.equal(layer.lora_A["default"], A)
        assert torch.equal(layer.lora_B["default"], B)


def test_e_statistics_and_same_seed_equality():
    layer = _svd_layer(20000, fan_in=2, fan_out=2, seed=0)
    E = layer.lora_E["default"]
    assert abs(E.mean().item()) < 0.02 * 4 / math.sqrt(20000)
    assert abs(E.std().item() - 0.02) < 0.0005
    a = get_peft_model(tiny_deberta(), ada())
    b = get_peft_model(tiny_deberta(), ada())
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_zero_e_adapter_equals_base_and_default_does_not():
    inputs = batch()
    base_logits = logits(tiny_deberta(), inputs)
    zero = get_peft_model(tiny_deberta(), ada(init_lora_weights="zero_e"))
    assert torch.equal(logits(zero, inputs), base_logits)
    lora = get_peft_model(tiny_deberta(), LoraConfig(task_type="SEQ_CLS", r=2))
    assert torch.equal(logits(lora, inputs), base_logits)
    assert not torch.equal(logits(get_peft_model(tiny_deberta(), ada()), inputs), base_logits)


# ---------------------------------------------------------------------------------------------- math
def test_svd_forward_formula_and_scaling():
    layer = _svd_layer(3, alpha=32, seed=0)
    x = torch.randn(2, 5)
    A, B, E = layer.lora_A["default"], layer.lora_B["default"], layer.lora_E["default"]
    expected = layer.base_layer(x)
    expected += (x @ (A * E).T @ B.T) * 32 / (torch.tensor([3.0]) + 1e-5)
    assert torch.equal(layer(x), expected)
    assert layer.scaling["default"] == 32
    delta = layer.get_delta_weight("default")
    assert torch.allclose(delta, B @ (A * E) * (32 / (3 + 1e-5)), atol=1e-7)


def _grads_of(layer, x, params):
    for p in params:
        p.grad = None
    (layer(x) ** 2).sum().backward()
    return [p.grad.clone() for p in params]


def test_adapter_branches_scale_in_place_with_the_out_of_place_bits():
    """Forward and gradients of both layers equal the plain formulas bit for bit (the layers scale the
    branch's matmul output in place to save activation-sized temporaries)."""
    torch.manual_seed(0)
    x = torch.randn(3, 7, 5, requires_grad=True)
    svd = _svd_layer(3, alpha=32)
    with torch.no_grad():
        svd.lora_E["default"].normal_()  # non-zero, so every gradient is exercised
    A, B, E = (svd.lora_A["default"], svd.lora_B["default"], svd.lora_E["default"])

    def svd_reference(x):
        return svd.base_layer(x) + (x @ (A * E).T @ B.T) * 32 / (torch.tensor([3.0]) + 1e-5)

    lora = LoraLinear(nn.Linear(5, 4), "default", r=2, lora_alpha=16)
    with torch.no_grad():
        lora.lora_B["default"].weight.normal_()
    lA, lB = lora.lora_A["default"], lora.lora_B["default"]

    def lora_reference(x):
        return lora.base_layer(x) + lB(lA(x)) * lora.scaling["default"]

    for layer, reference, params in ((svd, svd_reference, [A, B, E]), (lora, lora_reference, [lA.weight, lB.weight])):
        assert torch.equal(layer(x), reference(x))
        got = _grads_of(layer, x, [*params, x])
        want = _grads_of(reference, x, [*params, x])
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    empty = _svd_layer(0)
    assert empty.lora_A["default"].shape == (0, 5) and torch.equal(empty(x), empty.base_layer(x))


@pytest.mark.parametrize("kind", ["lora", "adalora"])
def test_merge_unmerge_and_merge_and_unload(kind):
    config = LoraConfig(task_type="SEQ_CLS", r=2) if kind == "lora" else ada()
    model = get_peft_model(tiny_deberta(), config)
    perturb_adapter(model)
    inputs = batch()
    ref = logits(model, inputs)
    w0 = model.base_model.model.deberta.encoder.layer[0].attention.self.query_proj.base_layer.weight.clone()
    model.merge_adapter(safe_merge=True)
    assert torch.allclose(logits(model, inputs), ref, atol=1e-5)
    model.unmerge_adapter()
    w1 = model.base_model.model.deberta.encoder.layer[0].attention.self.query_proj.base_layer.weight
    assert torch.allclose(w0, w1, atol=1e-6)
    assert torch.allclose(logits(model, inputs), ref, atol=1e-6)  # float add/subtract is not bit-exact
    plain = model.merge_and_unload()
    assert not any(isinstance(m, (LoraLinear, SVDLinear)) for m in plain.modules())
    assert "classifier.weight" in plain.state_dict()
    assert torch.allclose(logits(plain, inputs), ref, atol=1e-5)


def test_safe_merge_rejects_non_finite():
    layer = _svd_layer(3, seed=0)
    layer.lora_E["default"].data[0] = float("inf")
    w = layer.base_layer.weight.clone()
    with pytest.raises(ValueError, match="NaN/inf"):
        layer.merge(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, w) and not layer.merged


def test_disable_adapter_context():
    model = get_peft_model(tiny_deberta(), ada())
    perturb_adapter(model)
    inputs = batch()
    base_logits, adapted = logits(tiny_deberta(), inputs), logits(model, inputs)
    with model.disable_adapter():
        assert torch.equal(logits(model, inputs), base_logits)
    assert torch.equal(logits(model, inputs), adapted)
    model.merge_adapter()
    with model.disable_adapter():  # merged adapters are unmerged first, as in PEFT
        assert torch.allclose(logits(model, inputs), base_logits, atol=1e-5)


# ---------------------------------------------------------------------------------------------- orth reg
def _hand_penalty(model) -> torch.Tensor:
    terms = []
    for _, layer in model.base_model.adapter_layers():
        A, B = layer.lora_A["default"], layer.lora_B["default"]
        for gram in (A @ A.T, B.T @ B):
            terms.append(torch.sqrt(((gram - torch.eye(gram.shape[0])) ** 2).sum()))
    return sum(terms) / len(terms)


def test_orthogonal_penalty_added_to_loss():
    model = get_peft_model(tiny_deberta(), ada(orth_reg_weight=0.3))
    perturb_adapter(model)
    inputs = batch()
    out = model(**inputs)
    ce = nn.functional.cross_entropy(out.logits, inputs["labels"])
    assert torch.allclose(out.loss, ce + 0.3 * _hand_penalty(model), atol=1e-5)
    assert model(input_ids=inputs["input_ids"]).loss is None  # no labels, no loss, no penalty
    # a rank-0 module adds 0 to the sum but counts in N, as in PEFT
    model.base_model.resize_modules_by_rank_pattern({"pooler.dense.lora_E": [False] * 3})
    layers = [layer for _, layer in model.base_model.adapter_layers()]
    assert layers[-1].lora_A["default"].shape == (0, HIDDEN)
    with torch.no_grad():
        terms = [torch.linalg.matrix_norm(g - torch.eye(g.shape[0])) for layer in layers[:-1]
                 for g in (layer.lora_A["default"] @ layer.lora_A["default"].T,
                           layer.lora_B["default"].T @ layer.lora_B["default"])]
        penalty = orthogonal_penalty(model.base_model.model, "default")
    assert torch.allclose(penalty, sum(terms) / (2 * len(layers)), atol=1e-6)


def test_orth_weight_zero_allowed():
    model = get_peft_model(tiny_deberta(), ada(orth_reg_weight=0.0))
    inputs = batch()
    out = model(**inputs)
    assert torch.equal(out.loss, nn.functional.cross_entropy(out.logits, inputs["labels"]))


# ---------------------------------------------------------------------------------------------- allocator glue
def test_update_and_allocate_delegation_and_kept_ranks():
    config = ada(tinit=1, tfinal=2, total_step=8, deltaT=1)
    model = get_peft_model(tiny_deberta(), config)
    assert model.base_model.current_budget is None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.base_model.set_optimizer(opt)
    inputs = batch()
    for step in range(8):
        model(**inputs).loss.backward()
        opt.step()
        model.base_model.update_and_allocate(step)
        opt.zero_grad()
    assert model.base_model.current_budget == 2 * 13
    kept = model.base_model.kept_ranks()
    assert len(kept) == 13 and sum(kept.values()) == 26
    assert all(k.endswith(".lora_E.default") for k in config.rank_pattern)
    state = model.base_model.allocator_state_dict()
    model.base_model.load_allocator_state_dict(state)


def test_vilora_model_type_and_criterion():
    model = get_peft_model(tiny_deberta(), VILoraConfig(task_type="SEQ_CLS", init_r=3, target_r=2, criterion="SNR"))
    assert isinstance(model.base_model, VILoraModel) and isinstance(model.base_model, AdaLoraModel)
    assert model.base_model.rank_allocator.criterion == "SNR"
    assert VILoraConfig().criterion == "SNR_mean_abs"


def test_print_trainable_parameters(capsys):
    model = get_peft_model(tiny_bert(), LoraConfig(task_type="SEQ_CLS", r=2))
    trainable, total = model.get_nb_trainable_parameters()
    model.print_trainable_parameters()
    assert capsys.readouterr().out.strip() == (
        f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")
    assert trainable == 2 * 2 * 2 * (HIDDEN + HIDDEN) + HIDDEN * 2 + 2


def test_activation_checkpointing_passthrough_keeps_adapter_grads():
    model = get_peft_model(tiny_bert(), ada(init_r=2, target_r=1))
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.train()
    model(**batch()).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_conv1d_gpt2_adalora():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    base = GPT2ForSequenceClassification(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                                    num_labels=2, pad_token_id=0)).eval()
    with pytest.warns(UserWarning, match="fan_in_fan_out=True"):
        model = get_peft_model(base, ada(init_r=2, target_r=1))
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    assert isinstance(layer, SVDLinear) and layer.lora_A["default"].shape == (2, 16)
    assert layer.lora_B["default"].shape == (48, 2) and layer.fan_in_fan_out
    assert "score" in dict(model.base_model.modules_to_save_wrappers())
    ids = torch.randint(1, 50, (2, 7))
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        model.merge_adapter()
        assert torch.allclose(model(input_ids=ids).logits, ref, atol=1e-5)
