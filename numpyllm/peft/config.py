"""LoraConfig: which projections get an adapter and how large, with PEFT's field names."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

#: Fields of a PEFT LoRA config this package reads; any other field must keep its default
#: (listed here) or the adapter would compute something else than ours.
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "use_dora": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "layers_to_transform": None,
    "layers_pattern": None,
    "modules_to_save": None,
    "exclude_modules": None,
    "layer_replication": None,
    "lora_bias": False,
    "target_parameters": None,
    "trainable_token_indices": None,
    "use_qalora": False,
}


@dataclass
class LoraConfig:
    """A LoRA adapter's settings, named and meant as in Hugging Face PEFT's ``LoraConfig``.

    r               rank of the update: lora_A is (r, in), lora_B (out, r)
    lora_alpha      the update is scaled by lora_alpha / r (lora_alpha / sqrt(r) with
                    ``use_rslora``)
    lora_dropout    dropout on the adapter's input (not on the base layer's)
    target_modules  which linear layers get an adapter: a list of names, each matching a
                    layer whose dotted name is the name or ends with "." + name, or one
                    string, a regular expression the whole dotted name must match. Names
                    are the Hugging Face model's ("c_attn", "query", "q"), as PEFT sees
                    them; numpyllm's own names ("q_proj", "fc_in") match too. None: the
                    model's usual attention projections.
    fan_in_fan_out  True when the base weights are stored (in, out), as GPT-2's Conv1D;
                    None: set from the model (numpyllm stores every weight (in, out), but
                    the flag describes the Hugging Face layer the adapter file targets)
    bias            which biases train with the adapter: "none" (frozen), "all" (every
                    bias of the model, the norms' too), "lora_only" (the adapted layers'
                    own); trained biases are saved in the adapter file
    use_rslora      scale by lora_alpha / sqrt(r) instead (rank-stabilised LoRA)
    task_type, base_model_name_or_path, inference_mode: recorded in adapter_config.json
    """

    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | str | None = None
    fan_in_fan_out: bool | None = None
    bias: str = "none"
    use_rslora: bool = False
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    inference_mode: bool = False
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # other fields read

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, numbers.Integral) or self.r < 1:
            raise ValueError(f"LoraConfig.r must be an integer >= 1, got {self.r!r}")
        self.r = int(self.r)
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, numbers.Real):
            raise TypeError(f"LoraConfig.lora_alpha must be a number, got {self.lora_alpha!r}")
        if not self.lora_alpha > 0:
            raise ValueError(f"LoraConfig.lora_alpha must be > 0, got {self.lora_alpha!r}")
        p = self.lora_dropout
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"LoraConfig.lora_dropout must be in [0, 1), got {p!r}")
        if self.bias not in ("none", "all", "lora_only"):
            raise ValueError(
                f"LoraConfig.bias must be 'none', 'all' or 'lora_only', got {self.bias!r}"
            )
        targets = self.target_modules
        if isinstance(targets, (list, tuple, set)):
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise ValueError(
                    f"LoraConfig.target_modules must be non-empty names, got {targets!r}"
                )
            self.target_modules = (
                sorted(set(targets)) if isinstance(targets, set) else list(targets)
            )
        elif targets is not None and not (isinstance(targets, str) and targets):
            raise TypeError(
                f"LoraConfig.target_modules must be a list of names, a regular expression or "
                f"None, got {targets!r}"
            )

    @property
    def scaling(self) -> float:
        """The factor s of y = x W + b + s * dropout(x) A^T B^T."""
        return float(self.lora_alpha) / (self.r**0.5 if self.use_rslora else self.r)

    def to_json_dict(self) -> dict[str, Any]:
        """adapter_config.json's fields, as PEFT writes and reads them."""
        targets = self.target_modules
        return {
            **_UNSUPPORTED_DEFAULTS,
            "peft_type": "LORA",
            "task_type": self.task_type,
            "base_model_name_or_path": self.base_model_name_or_path,
            "inference_mode": self.inference_mode,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": sorted(targets) if isinstance(targets, list) else targets,
            "fan_in_fan_out": bool(self.fan_in_fan_out),
            "bias": self.bias,
            "use_rslora": self.use_rslora,
            "init_lora_weights": True,
        }

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], where: str = "adapter_config.json") -> LoraConfig:
        """Read a PEFT adapter config; refuse settings this package would compute differently."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} must hold a JSON object, got {type(data).__name__}")
        if data.get("peft_type", "LORA") != "LORA":
            raise ValueError(
                f"{where} is a {data.get('peft_type')} adapter; only LORA is supported"
            )
        for name, default in _UNSUPPORTED_DEFAULTS.items():
            value = data.get(name, default)
            if value != default and not (value in (None, [], {}) and default in (None, [], {})):
                raise ValueError(
                    f"{where} sets {name}={value!r}, which numpyllm's LoRA does not support "
                    f"(expected {default!r})"
                )
        known = {
            "r", "lora_alpha", "lora_dropout", "target_modules", "fan_in_fan_out", "bias",
            "use_rslora", "task_type", "base_model_name_or_path", "inference_mode",
        }  # fmt: skip
        fields = {k: data[k] for k in known if k in data}
        rest = {k: v for k, v in data.items() if k not in known}
        return cls(**fields, extra=rest)
