"""Hugging Face PEFT in our training script: the peer's LoRA and AdaLoRA at settings identical to ours.

    make peer-venv                      # .venv-hfpeft: Hugging Face peft 0.21.2 and the script's other needs
    .venv-hfpeft/bin/python bench/peer_hf_peft.py <run_glue_no_trainer.py flags>   # LoRA or AdaLoRA, AdamW

In that environment `import peft` is Hugging Face's package, so this runs run_glue_no_trainer.py's own main()
(same data, label ids, tokenisation, epoch order, AdamW groups, schedule, evaluation and outputs) with the
peer's adapters. The only code between the two is a handful of small adapters of the peer's API to what the
script calls on ours, below; AdaLoRA's total_step is given up front because Hugging Face's AdaLoraConfig
requires it (pass --max_train_steps). One difference is in the method, not the harness: Hugging Face PEFT
>= 0.12 starts AdaLoRA's singular values E at zero, ours (like PEFT 0.11, which the paper used) draws them
from N(0, 0.02). IVON/VILoRA runs are ours only.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _rank_pattern_helper() -> None:
    """The script reads rank patterns (the file format both packages share) with our `peft.rank_pattern`, a
    torch-only module; the peer has none, so ours is registered under that name."""
    import importlib.util

    path = REPO / "peft" / "src" / "peft" / "rank_pattern.py"
    spec = importlib.util.spec_from_file_location("peft.rank_pattern", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)


def adapt_peer_api() -> None:
    """Give Hugging Face PEFT the few calls the script makes on our peft, with the peer's own behaviour."""
    import peft
    from peft.tuners.adalora import AdaLoraConfig, AdaLoraModel
    from peft.tuners.lora import LoraConfig

    if getattr(peft, "VILoraConfig", None) is not None:
        raise SystemExit("peer_hf_peft: this environment has our peft, not Hugging Face's; use .venv-hfpeft")
    _rank_pattern_helper()
    from glue_run import settings

    def kept_ranks(self):
        cfg = self.peft_config[self.trainable_adapter_name]
        pattern = cfg.rank_pattern or {}
        names = [n.removesuffix(".lora_E." + self.trainable_adapter_name) for n, _ in self.model.named_parameters()
                 if n.endswith(".lora_E." + self.trainable_adapter_name)]
        return {n: int(sum(pattern[f"{n}.lora_E"])) if f"{n}.lora_E" in pattern else cfg.init_r for n in names}

    AdaLoraModel.set_optimizer = lambda self, optimizer: None    # the peer's sensitivity reads p.grad itself
    AdaLoraModel.kept_ranks = kept_ranks
    AdaLoraModel.current_budget = property(lambda self: None)    # not exposed by the peer; logged as null
    AdaLoraConfig.validate_schedule = lambda self: None          # the peer checks its schedule on construction
    # Our configs state their method and importance score; the peer's class says it (AdaLoRA is a LoRA subclass).
    LoraConfig.method = property(lambda self: "adalora" if isinstance(self, AdaLoraConfig) else "lora")
    LoraConfig.importance_criterion = property(lambda self: "sensitivity" if isinstance(self, AdaLoraConfig) else None)

    ours = settings.adapter_config

    def adapter_config(args):
        if args.lora_type == "vilora" or args.use_ivon:
            raise SystemExit("peer_hf_peft: IVON and VILoRA exist only in our peft")
        if args.lora_type == "adalora":
            if args.max_train_steps is None:
                raise SystemExit("peer_hf_peft: pass --max_train_steps (Hugging Face's AdaLoRA needs total_step)")
            fields = vars(ours(_with_type(args, "lora")))  # common fields through our own mapping
            return AdaLoraConfig(task_type=fields["task_type"], lora_alpha=args.lora_alpha,
                                 lora_dropout=args.lora_dropout, target_modules=fields["target_modules"],
                                 target_r=args.adalora_target_r, init_r=args.adalora_init_r,
                                 tinit=args.adalora_tinit, tfinal=args.adalora_tfinal, deltaT=args.adalora_delta_t,
                                 orth_reg_weight=args.adalora_orth_reg_weight, total_step=args.max_train_steps)
        return ours(args)

    settings.adapter_config = adapter_config  # every caller (flag checks, step plan, model) looks it up there


def _with_type(args, lora_type):
    import argparse
    return argparse.Namespace(**(vars(args) | {"lora_type": lora_type, "lora_r": args.lora_r or 8}))


def main(argv: list[str] | None = None) -> int:
    adapt_peer_api()
    import run_glue_no_trainer
    return run_glue_no_trainer.main(argv)


if __name__ == "__main__":
    sys.exit(main())
