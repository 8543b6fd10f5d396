"""Tiny models for the peft-core tests: 2-layer DeBERTa-v2 and BERT (hidden 32) built from configs."""
from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, BertConfig, DebertaV2Config

HIDDEN, INTERMEDIATE, VOCAB = 32, 64, 100


def deberta_config(num_layers: int = 2, num_labels: int = 2) -> DebertaV2Config:
    """DeBERTa-v3-like (relative attention, c2p/p2c, shared keys) at toy size."""
    return DebertaV2Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=num_layers, num_attention_heads=2,
        intermediate_size=INTERMEDIATE, max_position_embeddings=64, relative_attention=True,
        pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=32, norm_rel_ebd="layer_norm",
        share_att_key=True, pooler_hidden_size=HIDDEN, num_labels=num_labels, type_vocab_size=0,
    )


def tiny_deberta(seed: int = 0, num_layers: int = 2, num_labels: int = 2):
    """A deterministic randomly initialised DeBERTa-v2 sequence classifier (eval mode)."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(deberta_config(num_layers, num_labels)).eval()


def tiny_bert(seed: int = 0, num_labels: int = 2):
    """A deterministic randomly initialised BERT sequence classifier (eval mode)."""
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=INTERMEDIATE, max_position_embeddings=64, num_labels=num_labels)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def batch(seed: int = 1, size: int = 3, length: int = 9) -> dict[str, torch.Tensor]:
    """Token ids, a padded attention mask and labels."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB, (size, length), generator=g)
    attention_mask = torch.ones(size, length, dtype=torch.long)
    attention_mask[0, -3:] = 0
    labels = torch.randint(0, 2, (size,), generator=g)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def perturb_adapter(model, seed: int = 3, scale: float = 0.3) -> None:
    """Give every trainable tensor (adapter, heads) random non-trivial values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
