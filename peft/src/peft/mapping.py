"""``get_peft_model`` and the table from ``peft_type`` to tuner class."""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .adalora import AdaLoraModel, VILoraModel
from .config import PeftConfig
from .tuner import LoraModel

if TYPE_CHECKING:
    from .peft_model import PeftModel

TUNER_CLASSES: dict[str, type[LoraModel]] = {"LORA": LoraModel, "ADALORA": AdaLoraModel, "VILORA": VILoraModel}


def get_peft_model(model: nn.Module, peft_config: PeftConfig, adapter_name: str = "default") -> "PeftModel":
    """Inject the adapter described by ``peft_config`` into ``model`` (in place) and wrap it.

    Returns ``PeftModelForSequenceClassification`` for ``task_type="SEQ_CLS"`` (heads trained and saved in
    full), else the matching task class or ``PeftModel``. The config object stays live: the returned model's
    ``peft_config[adapter_name]`` is ``peft_config``.
    """
    from .peft_model import TASK_MODEL_CLASSES, PeftModel, _task_value

    if isinstance(model, PeftModel):
        raise ValueError("model is already a PeftModel; this package supports one adapter per model")
    if not isinstance(peft_config, PeftConfig):
        raise ValueError(f"peft_config must be a PeftConfig, got {type(peft_config).__name__}")
    model_cls = TASK_MODEL_CLASSES.get(_task_value(peft_config.task_type), PeftModel)
    return model_cls(model, peft_config, adapter_name)
