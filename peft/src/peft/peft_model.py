"""``PeftModel``: a transformers model with one adapter (``"default"``), saved and loaded as PEFT files.

Layout (as in Hugging Face PEFT, so state-dict keys match)::

    PeftModel
      .base_model          LoraModel | AdaLoraModel | VILoraModel   (the tuner)
        .model             the transformers model, with adapter layers inside
      .peft_config         {"default": config}   (the live config object)

Calls are forwarded unchanged (``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels``, ...);
attributes the wrapper lacks (``.device``, ``.gradient_checkpointing_enable``, ...) come from the model.
For ``task_type="SEQ_CLS"`` the heads ``classifier``/``score`` are added to ``modules_to_save``: they are
trained in full and stored in the adapter file, as PEFT does for sequence classification.
"""
from __future__ import annotations

import contextlib
import copy
import os
from typing import Any, Iterator, Optional

from torch import nn

from .config import PeftConfig
from .mapping import TUNER_CLASSES
from .save_load import (get_peft_model_state_dict, load_adapter_weights, save_adapter_weights,
                        set_peft_model_state_dict, write_model_card)

# Head modules trained in full and saved with the adapter, per task type.
TASK_HEAD_MODULES: dict[str, list[str]] = {
    "SEQ_CLS": ["classifier", "score"],
    "TOKEN_CLS": ["classifier", "score"],
    "QUESTION_ANS": ["qa_outputs"],
}


def _task_value(task_type: Any) -> Optional[str]:
    return None if task_type is None else str(getattr(task_type, "value", task_type))


class PeftModel(nn.Module):
    """Wrap ``model`` with the adapter described by ``peft_config`` (use ``get_peft_model``)."""

    def __init__(self, model: nn.Module, peft_config: PeftConfig, adapter_name: str = "default") -> None:
        super().__init__()
        heads = TASK_HEAD_MODULES.get(_task_value(peft_config.task_type), [])
        if heads:
            existing = list(peft_config.modules_to_save or [])
            peft_config.modules_to_save = existing + [h for h in heads if h not in existing]
        if peft_config.base_model_name_or_path is None:
            peft_config.base_model_name_or_path = getattr(model, "name_or_path", None) or None
        peft_type = str(getattr(peft_config.peft_type, "value", peft_config.peft_type))
        self.base_model = TUNER_CLASSES[peft_type](model, peft_config, adapter_name)
        self.active_adapter = adapter_name

    # ------------------------------------------------------------------ views
    @property
    def peft_config(self) -> dict[str, PeftConfig]:
        """``{adapter name: live config}``."""
        return self.base_model.peft_config

    @property
    def config(self) -> Any:
        """The transformers model config."""
        return getattr(self.base_model.model, "config", None)

    def get_base_model(self) -> nn.Module:
        """The transformers model (with adapter layers inside)."""
        return self.base_model.model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Forward everything (``input_ids``, ``attention_mask``, ``labels``, ...) to the tuner and model."""
        return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "base_model":
                raise
            return getattr(self.base_model, name)

    # ------------------------------------------------------------------ parameter counts
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, total)`` parameter counts (ranknum and frozen originals count in the total)."""
        trainable = total = 0
        for p in self.parameters():
            total += p.numel()
            if p.requires_grad:
                trainable += p.numel()
        return trainable, total

    def print_trainable_parameters(self) -> None:
        """Print ``trainable params: … || all params: … || trainable%: …``."""
        trainable, total = self.get_nb_trainable_parameters()
        share = 100 * trainable / total if total else 0.0
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}")

    # ------------------------------------------------------------------ adapters on/off, merging
    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Run the base model inside the block (heads revert to their originals too)."""
        with self.base_model.disable_adapter():
            yield

    def merge_adapter(self, safe_merge: bool = False) -> None:
        """Fold the adapter into the base weights (reversible with ``unmerge_adapter``)."""
        self.base_model.merge_adapter(safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        """Undo ``merge_adapter``."""
        self.base_model.unmerge_adapter()

    def merge_and_unload(self, safe_merge: bool = False) -> nn.Module:
        """Merge and return the plain transformers model (trained heads in place of the originals)."""
        return self.base_model.merge_and_unload(safe_merge=safe_merge)

    def unload(self) -> nn.Module:
        """Remove the adapter without merging and return the original transformers model."""
        return self.base_model.unload()

    # ------------------------------------------------------------------ files
    def save_pretrained(self, save_directory: str, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write ``adapter_model.safetensors``, ``adapter_config.json`` and ``README.md``, as PEFT does.

        AdaLoRA tensors are cut to the config's rank pattern; the live config is not modified.
        A non-default adapter name goes to ``<save_directory>/<name>``.
        """
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory {save_directory!r} is a file; give a directory")
        name = self.active_adapter
        directory = save_directory if name == "default" else os.path.join(save_directory, name)
        config = self.peft_config[name]
        save_adapter_weights(get_peft_model_state_dict(self, name), directory, safe_serialization)
        config.save_pretrained(directory, adapter_name=name)
        write_model_card(directory, config.base_model_name_or_path)

    @classmethod
    def from_pretrained(cls, model: nn.Module, model_id: str, adapter_name: str = "default",
                        is_trainable: bool = False, config: Optional[PeftConfig] = None,
                        **kwargs: Any) -> "PeftModel":
        """Build the adapter described in ``model_id`` on ``model`` and load its weights.

        ``is_trainable=False`` freezes the adapter, creates no rank allocator and puts the model in eval mode.
        """
        config = config if config is not None else PeftConfig.from_pretrained(model_id)
        config.inference_mode = not is_trainable
        model_cls = cls
        if cls is PeftModel:
            model_cls = TASK_MODEL_CLASSES.get(_task_value(config.task_type), PeftModel)
        peft_model = model_cls(model, config, adapter_name)
        peft_model.load_adapter(model_id, adapter_name, is_trainable=is_trainable)
        return peft_model

    def load_adapter(self, model_id: str, adapter_name: str = "default", is_trainable: bool = False,
                     **kwargs: Any) -> None:
        """Load weights from ``model_id`` into this model's adapter (one adapter per model).

        AdaLoRA layers are first shrunk to the file's rank pattern (``SVDLinear.resize``) and the live config takes
        that pattern. Call this before creating the optimizer: resizing replaces the adapter parameters.
        """
        if adapter_name != self.active_adapter:
            raise ValueError(
                f"this PeftModel holds one adapter ({self.active_adapter!r}); load_adapter can only reload it, "
                f"got adapter_name={adapter_name!r}"
            )
        file_config = PeftConfig.from_pretrained(model_id)
        live = self.peft_config[adapter_name]
        if file_config.is_adaptive != live.is_adaptive:
            raise ValueError(
                f"{model_id!r} holds a {_task_value(file_config.peft_type)} adapter but this model has "
                f"{_task_value(live.peft_type)}"
            )
        if file_config.is_adaptive and file_config.rank_pattern:
            self.base_model.resize_modules_by_rank_pattern(file_config.rank_pattern, adapter_name)
            live.rank_pattern = copy.deepcopy(file_config.rank_pattern)
        device = next(self.parameters()).device
        set_peft_model_state_dict(self, load_adapter_weights(model_id, device=str(device)), adapter_name)
        self.base_model.set_trainable(is_trainable)
        if not is_trainable:
            self.eval()


class PeftModelForSequenceClassification(PeftModel):
    """``PeftModel`` for ``task_type="SEQ_CLS"``: ``classifier``/``score`` trained and saved in full."""


class PeftModelForTokenClassification(PeftModel):
    """``PeftModel`` for ``task_type="TOKEN_CLS"``."""


class PeftMixedModel(nn.Module):
    """Not implemented: mixing adapter types in one model. The name exists because transformers'
    ``trainer_utils`` runs ``from peft import PeftMixedModel, PeftModel`` whenever a ``peft`` is installed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("PeftMixedModel (several adapter types in one model) is not implemented here")


TASK_MODEL_CLASSES: dict[str, type[PeftModel]] = {
    "SEQ_CLS": PeftModelForSequenceClassification,
    "TOKEN_CLS": PeftModelForTokenClassification,
}
