"""get_peft_model and PeftModel: LoRA adapters on a numpyllm model, in PEFT's file format.

An adapter folder, as Hugging Face PEFT writes and reads it:

    adapter_config.json          LoraConfig's fields (``LoraConfig.to_json_dict``)
    adapter_model.safetensors    base_model.model.<transformers module>.lora_A.weight  (r, in)
                                 base_model.model.<transformers module>.lora_B.weight  (out, r)

e.g. ``base_model.model.transformer.h.0.attn.c_attn.lora_A.weight`` for GPT-2. The arrays are
stored as numpyllm holds them: A and B already have torch's (out, in) orientation, whatever
the base layer's (GPT-2's Conv1D keeps (in, out), which is what ``fan_in_fan_out`` records).

With ``bias="all"`` or ``"lora_only"`` the trained biases are in the file too, under the
transformers model's names: ``base_model.model.<module>.bias``, where an adapted layer's
own bias is ``<module>.base_layer.bias`` (PEFT's wrapper keeps the base layer under that name).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from numpyllm.nn.linear import Linear
from numpyllm.nn.lora import LoraLinear
from numpyllm.nn.module import Module
from numpyllm.nn.parameter import Parameter
from numpyllm.peft.config import LoraConfig
from numpyllm.peft.targets import LinearLayer, kind_of, linear_layers, select, tensor_map

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def get_peft_model(
    model: Any, config: LoraConfig, rng: np.random.Generator | None = None
) -> PeftModel:
    """Put a LoRA adapter on the ``config.target_modules`` layers of ``model`` (in place) and
    freeze every other parameter. Returns the PeftModel wrapping it.

    Each chosen ``Linear`` is replaced by a ``LoraLinear`` over the same weight and bias, with
    A drawn from ``rng`` (default: seeded 0) and B = 0, so the model computes exactly what it
    computed before until B is trained. ``config.bias`` unfreezes biases as PEFT does: "all",
    every bias of the model (the norms' too); "lora_only", the adapted layers' own.
    """
    if not isinstance(config, LoraConfig):
        raise TypeError(f"get_peft_model expects a LoraConfig, got {type(config).__name__}")
    if not isinstance(model, Module):
        raise TypeError(f"get_peft_model expects a numpyllm model, got {type(model).__name__}")
    if any(isinstance(m, LoraLinear) for m in model.modules()):
        raise ValueError("this model already carries LoRA adapters (merge_and_unload it first)")
    kind = kind_of(model)
    target = config.target_modules or list(kind.default_targets)
    chosen = select(model, target)
    conv1d = {layer.conv1d for layer in chosen}
    config.target_modules = target
    config.fan_in_fan_out = conv1d == {True}  # what the transformers layers need
    if config.task_type is None:
        config.task_type = kind.task_type
    rng = rng if rng is not None else np.random.default_rng(0)
    frozen_before = {id(p): p.requires_grad for p in model.parameters()}
    model.requires_grad_(False)
    for layer in chosen:
        lora = LoraLinear(layer.layer, config.r, config.lora_alpha, config.lora_dropout, rng=rng)
        lora.scaling = config.scaling
        lora.train(layer.layer.training)
        _replace(model, layer.ours, lora)
    peft_model = PeftModel(model, config, frozen_before)
    for bias in peft_model.trained_biases().values():
        bias.requires_grad = True
    _forget_replicas(model)
    return peft_model


class PeftModel:
    """A model with LoRA adapters: the wrapped model's own API (forward, backward, generate,
    named_parameters, ...), plus ``trainable_parameters``, ``merge_and_unload``,
    ``save_pretrained`` and ``from_pretrained``.

    Parameter names are the model's own, with ``.lora_A`` / ``.lora_B`` for the adapters
    (``h.0.attn.c_attn.lora_A``); the base parameters are frozen (``requires_grad=False``).
    """

    def __init__(
        self, model: Any, config: LoraConfig, frozen_before: dict[int, bool] | None = None
    ) -> None:
        object.__setattr__(self, "base_model", model)
        object.__setattr__(self, "peft_config", config)
        object.__setattr__(self, "_requires_grad_before", frozen_before or {})

    # ---- the wrapped model's API ---------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "base_model"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.base_model, name, value)  # settings (num_threads, ...) are the model's

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.backward(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.generate(*args, **kwargs)

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        return self.base_model.named_parameters()

    def parameters(self) -> list[Parameter]:
        return self.base_model.parameters()

    def trainable_parameters(self) -> list[Parameter]:
        """The LoRA matrices, and the biases ``bias`` trains (every parameter with
        ``requires_grad``)."""
        return [p for p in self.base_model.parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts, the adapters included in both."""
        trainable = sum(p.size for p in self.trainable_parameters())
        return trainable, self.base_model.num_parameters()

    def train(self, mode: bool = True) -> PeftModel:
        self.base_model.train(mode)
        return self

    def eval(self) -> PeftModel:
        return self.train(False)

    def __repr__(self) -> str:
        trainable, total = self.num_trainable_parameters()
        return (
            f"PeftModel({type(self.base_model).__name__}, r={self.peft_config.r}, "
            f"targets={self.peft_config.target_modules}, trainable {trainable:,} of {total:,})"
        )

    # ---- adapters --------------------------------------------------------------------
    def lora_layers(self) -> list[tuple[LinearLayer, LoraLinear]]:
        """(layer names, LoraLinear) for every adapted layer, in the model's order."""
        return [(info, info.layer) for info in linear_layers(self.base_model)
                if isinstance(info.layer, LoraLinear)]  # fmt: skip

    def trained_biases(self) -> dict[str, Parameter]:
        """The biases ``peft_config.bias`` trains, by their key in PEFT's adapter file:
        none; every bias of the model ("all"); the adapted layers' own ("lora_only")."""
        bias = self.peft_config.bias
        if bias == "none":
            return {}
        adapted = {info.hf: lora for info, lora in self.lora_layers()}
        if bias == "lora_only":
            return {f"{PREFIX}{hf}.base_layer.bias": lora.bias
                    for hf, lora in adapted.items() if lora.bias is not None}  # fmt: skip
        ours = dict(self.base_model.named_parameters())
        found = {}
        for entry in tensor_map(self.base_model):
            if not entry.hf.endswith(".bias") or entry.ours not in ours:
                continue
            module = entry.hf.removesuffix(".bias")
            name = f"{module}.base_layer.bias" if module in adapted else entry.hf
            found[PREFIX + name] = ours[entry.ours]
        return found

    def adapter_state_dict(self) -> dict[str, np.ndarray]:
        """The adapter's arrays under PEFT's key names (the parameters' own arrays): every
        adapted layer's A and B, and the trained biases."""
        state = {}
        for info, lora in self.lora_layers():
            state[f"{PREFIX}{info.hf}.lora_A.weight"] = lora.lora_A.data  # (r, in)
            state[f"{PREFIX}{info.hf}.lora_B.weight"] = lora.lora_B.data  # (out, r)
        state.update({key: p.data for key, p in self.trained_biases().items()})
        return state

    def merge_and_unload(self) -> Any:
        """Fold each adapter into its base weight, W <- W + s * A^T B^T, put plain Linear
        layers back, restore the parameters' earlier ``requires_grad`` and return the model.
        The PeftModel is empty afterwards."""
        model = self.base_model
        for info, lora in self.lora_layers():
            lora.weight.data += lora.delta_weight().astype(lora.weight.dtype)
            _replace(model, info.ours, lora.unwrapped())
        before = self._requires_grad_before
        for p in model.parameters():
            p.requires_grad = before.get(id(p), True)
        _forget_replicas(model)
        object.__setattr__(self, "base_model", None)
        return model

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write adapter_config.json and adapter_model.safetensors into ``path`` (atomically,
        file by file), as PEFT's ``save_pretrained`` does; returns the folder."""
        from safetensors.numpy import save_file

        from numpyllm.hf.common import _atomic_write

        folder = Path(path)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"cannot save an adapter to {folder}: it is a file, not a folder")
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.ascontiguousarray(v) for k, v in self.adapter_state_dict().items()}
        _atomic_write(
            folder / WEIGHTS_FILE, lambda tmp: save_file(arrays, tmp, metadata={"format": "pt"})
        )
        text = json.dumps(self.peft_config.to_json_dict(), indent=2, sort_keys=True) + "\n"
        _atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text, "utf-8"))
        return folder

    @classmethod
    def from_pretrained(cls, model: Any, path: str | os.PathLike) -> PeftModel:
        """Load the adapter folder ``path`` (ours or PEFT's) onto ``model``, in place."""
        folder = Path(path)
        config = _read_config(folder)
        tensors = _read_adapter(folder / WEIGHTS_FILE)
        peft_model = get_peft_model(model, config)
        try:
            peft_model.load_adapter_state(tensors, str(folder / WEIGHTS_FILE))
        except BaseException:
            peft_model.merge_and_unload()  # B may be half-loaded: give the model back intact
            raise
        return peft_model

    def check_adapter_config(self, path: str | os.PathLike) -> None:
        """ValueError unless the adapter folder ``path`` was saved with this model's LoRA
        settings (rank, alpha, dropout, targets, bias), as a resumed run needs."""
        saved = _read_config(Path(path)).to_json_dict()
        mine = self.peft_config.to_json_dict()
        differing = sorted(k for k in mine if k != "base_model_name_or_path"
                           and saved.get(k) != mine[k])  # fmt: skip
        if differing:
            details = ", ".join(f"{k}: {saved.get(k)!r} vs {mine[k]!r}" for k in differing)
            raise ValueError(
                f"the adapter in {path} was saved with other LoRA settings (saved vs this "
                f"model's): {details}"
            )

    def load_adapter(self, path: str | os.PathLike) -> None:
        """Copy the adapter saved in the folder ``path`` into this model's, in place (the
        optimizer's views of the parameters stay valid): every key and shape is checked."""
        weights_file = Path(path) / WEIGHTS_FILE
        self.load_adapter_state(_read_adapter(weights_file), str(weights_file))

    def _bias_leeway(self) -> tuple[dict[str, str], set[str]]:
        if self.peft_config.bias == "none":
            return {}, set()
        return _bias_key_leeway(self.base_model)

    def load_adapter_state(self, tensors: dict[str, np.ndarray], where: str = "state") -> None:
        """Copy PEFT-named arrays into the adapters; every key and shape is checked first."""
        expected = self.adapter_state_dict()
        names = {_strip_adapter_name(k): v for k, v in tensors.items()}
        aliases, optional = self._bias_leeway()
        names = {k: v for k, v in names.items() if k not in aliases or aliases[k] not in names}
        expected = {k: v for k, v in expected.items() if k in names or k not in optional}
        missing = sorted(set(expected) - set(names))
        unexpected = sorted(set(names) - set(expected))
        if missing or unexpected:
            kind = type(self.base_model).__name__
            raise ValueError(
                f"{where} does not fit this {kind} (adapter made for another model or other "
                f"target_modules?): "
                + "; ".join(
                    f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected))
                    if keys
                )
            )
        for key, target in expected.items():
            if names[key].shape != target.shape:
                raise ValueError(
                    f"{where}: {key} has shape {names[key].shape}, this model's adapter needs "
                    f"{target.shape} (a base model of another size?)"
                )
        for key, target in expected.items():
            target[...] = names[key]


def _bias_key_leeway(model: Any) -> tuple[dict[str, str], set[str]]:
    """For trained biases read from PEFT's file: the transformers model's second names of a
    tied bias (BERT's ``cls.predictions.decoder.bias``, saved beside ``cls.predictions.bias``)
    and the bias keys of heads its checkpoint may lack (BertForMaskedLM has no pooler and
    no classifier: those biases then keep their values)."""
    import importlib

    from numpyllm.peft.targets import kind_of

    hf = importlib.import_module(kind_of(model).hf_module)
    aliases = {PREFIX + alias: PREFIX + name for alias, name in getattr(hf, "TIED", {}).items()}
    optional_groups = set(getattr(hf, "OPTIONAL_GROUPS", ()))
    optional = {PREFIX + entry.hf for entry in tensor_map(model) if entry.group in optional_groups}
    return aliases, optional


def _strip_adapter_name(key: str) -> str:
    """PEFT drops the adapter's name ("default") from saved keys; accept it if present."""
    return key.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def _read_config(folder: Path) -> LoraConfig:
    """The LoraConfig of an adapter folder; FileNotFoundError when a file is missing."""
    config_file = folder / CONFIG_FILE
    for file in (config_file, folder / WEIGHTS_FILE):
        if not file.is_file():
            raise FileNotFoundError(
                f"{file.name} not found in {folder}: an adapter folder holds {CONFIG_FILE} "
                f"and {WEIGHTS_FILE}"
            )
    try:
        data = json.loads(config_file.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file} is not valid JSON: {e}") from None
    return LoraConfig.from_json_dict(data, str(config_file))


def _read_adapter(file: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file (bfloat16 widened to float32), nothing unpickled."""
    from numpyllm.hf.tensor_file import read_header

    return {name: ref.read() for name, ref in read_header(file)[0].items()}


def _replace(model: Module, dotted: str, new: Linear) -> None:
    parent: Module = model
    *path, last = dotted.split(".")
    for part in path:
        parent = parent._modules[part]
    setattr(parent, last, new)


def _forget_replicas(model: Module) -> None:
    """Replicas made for split batches mirror the old module tree: made again on next use."""
    if isinstance(vars(model).get("_replicas"), list):
        object.__setattr__(model, "_replicas", [])
