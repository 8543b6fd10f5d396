"""File interop between this project's ``peft`` and Hugging Face PEFT (both import as ``peft``).

Run with either interpreter; the script detects which ``peft`` it got (ours has ``VILoraConfig``).

    python check_hf_peft.py save  --kind {lora,adalora,vilora} --dir D
        build a tiny DeBERTa-v2 (seeded), save it to D/base, reload it, add the adapter, give the adapter
        and head non-trivial values, prune some AdaLoRA triplets by hand (ranks 0..init_r), save to D/adapter.
        Writes D/expected.pt: in-memory logits, the logits of the saver's own reload, the initial adapter
        tensors, and which package saved.
    python check_hf_peft.py check --dir D
        load D/base + D/adapter with this interpreter's peft; logits must equal the saver's reload bit for
        bit (same tensor shapes on both sides) and the in-memory logits to 1e-6. For LoRA and zero-E AdaLoRA
        the same seed must also give the same initial adapter tensors on both sides.

Exit status 0 on success, 1 on a mismatch; one summary line on stdout either way.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
from transformers import AutoModelForSequenceClassification, DebertaV2Config

import peft

OURS = hasattr(peft, "VILoraConfig")
SIDE = "ours" if OURS else f"hf-peft-{peft.__version__}"
PRUNE = [[False, False, False], [False, True, False], [True, False, True], [True, True, True]]


def base_config() -> DebertaV2Config:
    return DebertaV2Config(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
        max_relative_positions=32, norm_rel_ebd="layer_norm", share_att_key=True, pooler_hidden_size=32,
        num_labels=2, type_vocab_size=0,
    )


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (4, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def load_base(directory: str):
    return AutoModelForSequenceClassification.from_pretrained(os.path.join(directory, "base")).eval()


def adapter_config(kind: str):
    common = dict(task_type="SEQ_CLS", lora_dropout=0.0)
    if kind == "lora":
        return peft.LoraConfig(r=3, lora_alpha=6, target_modules=["query_proj", "value_proj", "dense"], **common)
    ada = dict(init_r=3, target_r=2, lora_alpha=16, total_step=10, tinit=2, tfinal=2, orth_reg_weight=0.1, **common)
    if kind == "vilora":
        return peft.VILoraConfig(criterion="SNR", **ada)  # only ours has it; default (PEFT 0.11) init
    # current PEFT initialises E to zero; ours does with init_lora_weights="zero_e"
    return peft.AdaLoraConfig(init_lora_weights="zero_e" if OURS else True, **ada)


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs()).logits


def save(kind: str, directory: str) -> None:
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(base_config()).save_pretrained(os.path.join(directory, "base"))
    torch.manual_seed(123)
    model = peft.get_peft_model(load_base(directory), adapter_config(kind))
    init = adapter_tensors(model)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    if kind != "lora":  # prune as the allocator would: adapter-suffixed pattern keys, masked E zeroed
        pattern = {}
        for i, (name, p) in enumerate(n_p for n_p in model.named_parameters() if ".lora_E." in n_p[0]):
            mask = PRUNE[i % len(PRUNE)]
            with torch.no_grad():
                p[~torch.tensor(mask)] = 0.0
            pattern[name.removeprefix("base_model.model.")] = mask
        model.peft_config["default"].rank_pattern = pattern
    model.eval()
    in_memory = logits(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(os.path.join(directory, "adapter"))
    reloaded = peft.PeftModel.from_pretrained(load_base(directory), os.path.join(directory, "adapter"))
    torch.save({"kind": kind, "side": SIDE, "in_memory": in_memory, "reloaded": logits(reloaded), "init": init},
               os.path.join(directory, "expected.pt"))
    print(f"[{SIDE}] saved {kind} adapter to {directory}")


def check(directory: str) -> int:
    expected = torch.load(os.path.join(directory, "expected.pt"), weights_only=True)
    kind = expected["kind"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.PeftModel.from_pretrained(load_base(directory), os.path.join(directory, "adapter"))
    got = logits(model)
    problems = []
    if not torch.equal(got, expected["reloaded"]):
        problems.append(f"logits differ from {expected['side']}'s reload by {(got - expected['reloaded']).abs().max():.3g}")
    diff_mem = (got - expected["in_memory"]).abs().max().item()
    if diff_mem > 1e-6:
        problems.append(f"logits differ from {expected['side']}'s in-memory model by {diff_mem:.3g}")
    init_note = "init not compared (VILoRA default init is PEFT 0.11's)"
    if kind in ("lora", "adalora"):
        torch.manual_seed(123)
        fresh = adapter_tensors(peft.get_peft_model(load_base(directory), adapter_config(kind)))
        same = fresh.keys() == expected["init"].keys() and all(torch.equal(fresh[k], expected["init"][k]) for k in fresh)
        init_note = "same-seed init identical" if same else "same-seed init DIFFERS"
        if not same:
            problems.append("same-seed initial adapter tensors differ")
    status = "OK" if not problems else "FAIL: " + "; ".join(problems)
    print(f"[{SIDE}] {kind} adapter saved by {expected['side']}: logits identical to its reload="
          f"{torch.equal(got, expected['reloaded'])}, max diff to in-memory {diff_mem:.3g}, {init_note} -> {status}")
    return 0 if not problems else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["save", "check"])
    parser.add_argument("--kind", choices=["lora", "adalora", "vilora"], default="lora")
    parser.add_argument("--dir", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.mode == "save":
        if args.kind == "vilora" and not OURS:
            parser.error("Hugging Face PEFT has no VILoRA; save vilora with this project's peft")
        save(args.kind, args.dir)
        return 0
    return check(args.dir)


if __name__ == "__main__":
    sys.exit(main())
