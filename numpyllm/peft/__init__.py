"""LoRA fine-tuning: adapters on any numpyllm model's linear layers, in Hugging Face PEFT's
format (``adapter_config.json`` + ``adapter_model.safetensors``)."""

from numpyllm.peft.config import LoraConfig
from numpyllm.peft.model import PeftModel, get_peft_model

__all__ = ["LoraConfig", "PeftModel", "get_peft_model"]
