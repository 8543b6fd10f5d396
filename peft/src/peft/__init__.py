"""LoRA, AdaLoRA and VILoRA adapters."""
