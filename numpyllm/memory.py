"""Where a training step's memory goes, worked out before the step runs.

    report = nl.memory_report(model, batch_size=16, seq_len=128)
    print(report)                      # a table: one row per layer, totals, peak vs available
    report.check()                     # InsufficientMemoryError when the peak does not fit

Every figure is in bytes and follows from the shapes alone (B rows of T tokens, width d,
d_ff, H heads, vocabulary V, s bytes per number), so nothing is allocated to find it:

    parameters    every parameter array, as the model holds it
    gradients     one array the size of each trainable parameter (``Parameter.grad``; a
                  frozen one, ``requires_grad = False``, has none: a LoRA run's base model)
    optimizer     AdamW keeps two (m and v), SGD with momentum one, plain SGD none, for
                  each trainable parameter
    activations   the arrays a forward keeps for its backward: about ten (B, T, d) arrays
                  per GPT block (see ``_gpt_plan``), one with recomputation
    temporaries   the largest arrays that live only inside one layer's forward or backward
                  (attention's score blocks, the MLP's hidden rows, the input gradients);
                  one layer's at a time, so the peak takes the largest, once per thread
    FLOPs/token   2 per weight forward, 4 backward (6 per weight), plus attention's
                  12 T d per layer; recomputation adds one more forward (8 per weight)

    peak = process + parameters + gradients + optimizer + activations + max(temporaries)

``process`` is what the process holds besides the model: the interpreter, the libraries,
the data and the tokenizer (its resident set now, less the parameters, which are already
resident and counted in their own column).

Models are described by plans registered in ``PLANS`` under their class name (GPT, BERT,
T5, Llama): a function (model, batch_size, seq_len, recompute, threads) -> list of
``LayerMemory``. A new model adds its own plan there; the report and the guard then work
for it unchanged.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from numpyllm.functional.attention import DEFAULT_BLOCK_SIZE, causal_chunks

MIB = 1 << 20

# Optimizer state per parameter, in parameter-sized arrays.
OPTIMIZER_SLOTS = {"adamw": 2, "adam": 2, "sgd-momentum": 1, "sgd": 0, "none": 0}


class InsufficientMemoryError(MemoryError):
    """A run whose estimated peak exceeds the memory available; raised before allocating."""


@dataclass
class LayerMemory:
    """One row of the report: a layer (or the embeddings, or the head and loss), in bytes."""

    name: str
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    temporaries: int
    flops_per_token: float


@dataclass
class MemoryReport:
    """The memory of one training step of ``model_name`` on batches of ``batch_size`` x
    ``seq_len``, per layer and in total, next to the memory available (None if unknown)."""

    model_name: str
    batch_size: int
    seq_len: int
    recompute: bool
    threads: int
    optimizer_name: str
    layers: list[LayerMemory]
    process: int
    available: int | None
    can_recompute: bool = False
    notes: list[str] = field(default_factory=list)
    fitting: list[str] = field(default_factory=list)  # settings that fit, when this does not

    @property
    def parameters(self) -> int:
        return sum(layer.parameters for layer in self.layers)

    @property
    def gradients(self) -> int:
        return sum(layer.gradients for layer in self.layers)

    @property
    def optimizer(self) -> int:
        return sum(layer.optimizer for layer in self.layers)

    @property
    def activations(self) -> int:
        return sum(layer.activations for layer in self.layers)

    @property
    def temporaries(self) -> int:
        """The largest layer's temporaries: layers run one after another."""
        return max((layer.temporaries for layer in self.layers), default=0)

    @property
    def flops_per_token(self) -> float:
        return sum(layer.flops_per_token for layer in self.layers)

    @property
    def model_bytes(self) -> int:
        """Everything the step allocates for the model: the five columns, peak temporaries."""
        return sum(getattr(self, column) for column in _COLUMNS)

    @property
    def peak(self) -> int:
        """Estimated peak resident set of the training process, in bytes."""
        return self.process + self.model_bytes

    @property
    def fits(self) -> bool:
        return self.available is None or self.peak <= self.available

    def table(self) -> str:
        """The report as a text table (MiB; FLOPs per token in millions)."""
        head = ("layer", "params", "grads", "optimizer", "activations", "temporaries", "MFLOP/tok")
        rows = [
            (layer.name, *(_mib(getattr(layer, c)) for c in _COLUMNS), _mflop(layer))
            for layer in self.layers
        ]
        total = ("total", *(_mib(getattr(self, c)) for c in _COLUMNS), _mflop(self))
        widths = [max(len(r[i]) for r in (head, *rows, total)) for i in range(len(head))]

        def line(cells: tuple[str, ...]) -> str:
            first = cells[0].ljust(widths[0])
            return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

        rule = "-" * len(line(head))
        mode = "on" if self.recompute else "off"
        out = [
            f"memory of one training step: {self.model_name}, batch {self.batch_size} x "
            f"{self.seq_len} tokens, recomputation {mode}, {self.optimizer_name}, "
            f"{self.threads} thread(s); MiB",
            line(head),
            rule,
            *(line(r) for r in rows),
            rule,
            line(total),
            "",
            f"process now (interpreter, libraries, data) {_mib(self.process):>10} MiB",
            f"estimated peak                             {_mib(self.peak):>10} MiB",
            f"available                                  {_available(self.available):>10}",
        ]
        out += self.notes
        return "\n".join(out)

    __str__ = table

    def check(self, settings: str = "") -> None:
        """Raise ``InsufficientMemoryError`` naming both figures and what would fit, if the
        estimated peak exceeds the memory available."""
        if self.fits:
            return
        raise InsufficientMemoryError(
            f"this run needs about {_mib(self.peak)} MiB at its peak but only "
            f"{_mib(self.available or 0)} MiB is available ({self.model_name}, batch "
            f"{self.batch_size} x {self.seq_len} tokens{settings}). " + self.suggestions()
        )

    def suggestions(self) -> str:
        """Settings that would fit (worked out by ``memory_report`` when the peak does not)."""
        if not self.fitting:
            return "Even one short row does not fit: try a smaller model (--preset, --d-model)."
        return "Settings that would fit: " + "; or ".join(self.fitting) + "."


_COLUMNS = ("parameters", "gradients", "optimizer", "activations", "temporaries")


def _mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def _mflop(x: Any) -> str:
    return f"{x.flops_per_token / 1e6:,.2f}"


def _available(n: int | None) -> str:
    return "unknown" if n is None else f"{_mib(n)} MiB"


# ---------------------------------------------------------------- the machine's memory


def available_memory() -> int | None:
    """Bytes this process may use in all: its resident set now plus the smaller of the
    kernel's MemAvailable (/proc/meminfo) and what the cgroup limit leaves (memory.max -
    memory.current, cgroup v2; limit_in_bytes - usage_in_bytes, v1); None where neither can
    be read (not Linux). The environment variable NUMPYLLM_MEMORY_LIMIT (e.g. "2G") sets
    the figure instead: a budget to keep runs within."""
    figures = []
    limit = os.environ.get("NUMPYLLM_MEMORY_LIMIT", "").strip()
    if limit:
        return _parse_size(limit)
    meminfo = _read_meminfo()
    if "MemAvailable" in meminfo:
        figures.append(meminfo["MemAvailable"])
    cgroup = _cgroup_room()
    if cgroup is not None:
        figures.append(cgroup)
    if not figures:
        return None
    return min(figures) + resident_bytes()


def _parse_size(text: str) -> int:
    """'2G', '512M', '4096K' or a number of bytes -> bytes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.upper().rstrip("IB"), 1
    if number and number[-1] in units:
        number, unit = number[:-1], units[number[-1]]
    try:
        value = float(number) * unit
    except ValueError:
        raise ValueError(
            f"NUMPYLLM_MEMORY_LIMIT must be a size such as 2G, 512M or a number of bytes, "
            f"got {text!r}"
        ) from None
    return int(value)


def _read_meminfo() -> dict[str, int]:
    try:
        with open("/proc/meminfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name] = int(parts[0]) * 1024  # kB
    return out


def _cgroup_room() -> int | None:
    """Limit minus usage of this process's memory cgroup, or None if unlimited/unknown."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            with open(limit_file) as f:
                limit_text = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if not limit_text.isdigit() or int(limit_text) >= 1 << 60:  # "max" or v1's "no limit"
            return None
        return max(int(limit_text) - usage, 0)
    return None


def resident_bytes() -> int:
    """This process's resident set now (VmRSS), in bytes; 0 where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ------------------------------------------------------------------------- the report


def memory_report(
    model: Any,
    batch_size: int,
    seq_len: int,
    recompute: bool | None = None,
    optimizer: str = "adamw",
    threads: int | None = None,
    available: int | None | str = "auto",
) -> MemoryReport:
    """The memory (and FLOP) report of one training step of ``model`` on batch_size x seq_len
    tokens, before running it.

    recompute: activation recomputation (gradient checkpointing); default the model's own
               ``recompute_activations`` setting.
    optimizer: "adamw" (the Trainer's), "adam", "sgd-momentum", "sgd" or "none".
    threads:   parts the batch is split into (``numpyllm.nn.parallel``); default the model's
               ``num_threads`` resolved as a training pass would resolve it.
    available: bytes available; "auto" reads them from the system (``available_memory``).
    """
    model = _plain_model(model)
    name = type(model).__name__
    plan = PLANS.get(name)
    if plan is None:
        raise TypeError(
            f"memory_report: no memory plan for {name}; known models: {', '.join(sorted(PLANS))} "
            "(a new model registers one in numpyllm.memory.PLANS)"
        )
    for label, value, low in (("batch_size", batch_size, 1), ("seq_len", seq_len, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"memory_report: {label} must be an integer >= {low}, got {value!r}")
    if optimizer not in OPTIMIZER_SLOTS:
        raise ValueError(
            f"memory_report: optimizer must be one of {sorted(OPTIMIZER_SLOTS)}, got {optimizer!r}"
        )
    if recompute is None:
        recompute = bool(getattr(model, "recompute_activations", False))
    notes = []
    can_recompute = hasattr(model, "recompute_activations")
    if recompute and not can_recompute:
        notes.append(f"note: {name} cannot recompute its activations; counted without")
        recompute = False
    process = max(resident_bytes() - _parameter_bytes(model), 0)
    if available == "auto":
        available = available_memory()

    def build(batch: int, seq: int, recompute: bool) -> MemoryReport:
        parts = threads or _training_threads(model, batch, seq)
        layers = plan(model, batch, seq, recompute, parts)
        for layer in layers:
            layer.optimizer = OPTIMIZER_SLOTS[optimizer] * layer.gradients
        return MemoryReport(
            model_name=name,
            batch_size=batch,
            seq_len=seq,
            recompute=recompute,
            threads=parts,
            optimizer_name=optimizer,
            layers=layers,
            process=process,
            available=available if available is None else int(available),
            can_recompute=can_recompute,
            notes=notes,
        )

    report = build(int(batch_size), int(seq_len), recompute)
    if not report.fits:
        report.fitting = _fitting_settings(report, build)
    return report


def _fitting_settings(report: MemoryReport, build: Callable[..., MemoryReport]) -> list[str]:
    """The largest batch size that fits; recomputation (with the largest batch size that
    then fits, if smaller); the longest row that fits at this batch size. The peak grows
    with the batch size and the row length, so each is found by bisection."""
    B, T, recompute = report.batch_size, report.seq_len, report.recompute
    found = []
    rows = _largest(lambda b: build(b, T, recompute).fits, B - 1)
    if rows:
        found.append(f"--per-device-train-batch-size {rows}")
    if report.can_recompute and not recompute:
        lean_rows = _largest(lambda b: build(b, T, True).fits, B)
        if lean_rows == B:
            found.append("--gradient-checkpointing")
        elif lean_rows > rows:
            found.append(f"--gradient-checkpointing with --per-device-train-batch-size {lean_rows}")
    tokens = _largest(lambda t: build(B, t, recompute).fits, T - 1)
    if tokens >= 2:
        found.append(f"--seq-len {tokens}")
    return found


def _largest(fits: Callable[[int], bool], high: int) -> int:
    """The largest n in 1 .. high with fits(n) (fits decreasing in n); 0 if none."""
    low = 0
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _parameter_bytes(model: Any) -> int:
    return sum(p.data.nbytes for p in model.parameters())


def _training_threads(model: Any, batch: int, seq: int) -> int:
    from numpyllm.nn.parallel import part_count

    setting = getattr(model, "num_threads", 1)
    width = model.config.d_model
    return max(1, min(part_count(setting, batch * seq, width), batch))


def _plain_model(model: Any) -> Any:
    """The model itself; a ``numpyllm.peft.PeftModel``'s base model (adapters included)."""
    from numpyllm.peft import PeftModel

    return model.base_model if isinstance(model, PeftModel) else model


def _module_params(*modules: Any) -> int:
    return _bytes(modules, trainable=False)


def _bytes(modules: tuple[Any, ...], trainable: bool) -> int:
    """Bytes of the modules' parameters (each once; a Parameter counts as itself); with
    ``trainable``, of those with ``requires_grad`` alone, which get a gradient and optimizer
    state."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        if module is None:
            continue
        for p in module.parameters() if hasattr(module, "parameters") else [module]:
            if id(p) not in seen and (p.requires_grad or not trainable):
                seen.add(id(p))
                total += p.data.nbytes
    return total


def _row(name: str, params: int, activations: float, temporaries: float, flops: float,
         *grad_modules: Any):  # fmt: skip
    """A report row; ``grad_modules``, the modules ``params`` counts: only their trainable
    parameters have gradients (all of ``params`` when none are given)."""
    return LayerMemory(
        name=name,
        parameters=params,
        gradients=_bytes(grad_modules, trainable=True) if grad_modules else params,
        optimizer=0,
        activations=int(activations),
        temporaries=int(temporaries),
        flops_per_token=float(flops),
    )


def _attention_scores(
    rows: int, heads: int, tq: int, tk: int, bias: bool = False, causal: bool = False
) -> int:
    """Numbers in one attention call's score array: per row and head, the (Tq, Tk) scores
    when they fit in one block (causal: the largest chunk of query rows, with the keys it
    sees), else one (block x block) piece, for one head of one row at a time (for all of
    them with a ``bias``, whose gradient keeps the heads together) (``functional.attention``)."""
    if tq * tk <= DEFAULT_BLOCK_SIZE * DEFAULT_BLOCK_SIZE:
        chunks = causal_chunks(tq, tk, causal)
        return rows * heads * max((r.stop - r.start) * (k.stop - k.start) for r, k in chunks)
    together = rows * heads if bias else 1
    return together * min(tq, DEFAULT_BLOCK_SIZE) * min(tk, DEFAULT_BLOCK_SIZE)


# ------------------------------------------------------------------------------ plans


def _gpt_plan(model: Any, B: int, T: int, recompute: bool, threads: int) -> list[LayerMemory]:
    """GPT, with u = B T d s (one (B, T, d) array) and p the dropout probability.

    Kept by block l for its backward (``models/gpt.py``): q, k, v (3u, one fused array),
    the merged heads (u), the attention residual a (u), the MLP pre-activation
    (B T d_ff s), the block's output (u, the next block's input) and, with dropout, two
    scaled masks (2u): (6 + d_ff/d + 2[p > 0]) u, ten or twelve u for d_ff = 4d. With
    recomputation only the output (u) is kept, and one block's caches are rebuilt at a
    time in the backward (a temporary).

    Temporaries of a block: the backward's input gradients (dqkv 3u, dmerged, dout, da:
    about 6u), attention's two score-sized arrays per thread (probabilities and their
    gradient) and the MLP's three (rows, d_ff) arrays per thread.
    Embeddings: x_0 (u; with dropout also its mask, u). Head: the final LayerNorm's output
    (u) and cross-entropy's exp(logits) (B T V s) kept; the logits (B T V s) themselves
    are a temporary, as are the head's gradient (V d s) and dx (u).
    """
    cfg = model.config
    s = model.wte.weight.data.itemsize
    d, H, V, f = cfg.d_model, cfg.n_head, cfg.vocab_size, cfg.d_ff
    u = B * T * d * s
    drop = cfg.dropout > 0
    rows_per_part = math.ceil(B / threads)
    from numpyllm.nn.execution import BLOCKS, BLOCKS_RECOMPUTE  # the passes' block sizes

    blocks = BLOCKS_RECOMPUTE if recompute else BLOCKS
    elements = blocks.attention_elements
    attn_rows = min(rows_per_part, max(1, elements // (H * T * T)))
    scores = 2 * _attention_scores(attn_rows, H, T, T, causal=True) * s * threads
    mlp = 3 * min(blocks.mlp_rows, rows_per_part * T) * f * s * threads
    cached = (6 + f / d + 2 * drop) * u + 3 * B * T * s * (H + 4)  # + row lse, norm stats
    kept = u if recompute else cached
    layers = [_row("embeddings", _module_params(model.wte, model.wpe), (1 + drop) * u, 2 * u, 0.0,
                   model.wte, model.wpe)]  # fmt: skip
    forward_passes = 4 if recompute else 3  # forward + backward (2 forwards' worth) [+ again]
    for i, block in enumerate(model.h):
        params = _module_params(block)
        weights = sum(p.data.size for p in block.parameters())  # biases too, as GPT counts
        flops = forward_passes * (2 * weights + 4 * T * d)
        replica_grads = (threads - 1) * params  # a replica's block gradients, while added
        temps = 6 * u + max(scores, mlp) + replica_grads + (cached if recompute else 0)
        layers.append(_row(f"block {i}", params, kept, temps, flops, block))
    head_temps = B * T * V * s + V * d * s + 2 * u
    head_flops = 6 * (V * d + 2 * d)  # the tied head's matmul (and ln_f, as GPT counts it)
    layers.append(
        _row("head + loss", _module_params(model.ln_f), u + B * T * V * s, head_temps, head_flops,
             model.ln_f)  # fmt: skip
    )
    return layers


def _encoder_layer(B: int, T: int, d: int, inner: int, f: int, s: int, p: float, ffn: str):
    """Activations kept by one post- or pre-norm encoder layer of BERT / T5 (bytes):
    the norm's input and output (2u), q, k, v and the merged heads (4 inner), the
    attention output's residual sum (u), the feed-forward's caches (three (B, T, f)
    arrays: pre-activation, activation cache, activated input of the output projection;
    five when gated), the output (u), and two dropout masks when p > 0."""
    u = B * T * d * s
    per_inner = B * T * inner * s
    ffn_arrays = 5 if ffn == "gated" else 3
    return 4 * u + 4 * per_inner + ffn_arrays * B * T * f * s + (2 * u if p > 0 else 0)


def _bert_plan(model: Any, B: int, T: int, recompute: bool, threads: int) -> list[LayerMemory]:
    """BERT: per layer ``_encoder_layer``; attention runs over the whole (part of the)
    batch at once, so its two score-sized temporaries hold rows * H * T * T numbers (one
    block's worth beyond ``DEFAULT_BLOCK_SIZE``). Embeddings keep the LayerNorm's input,
    the dropout mask and output (3u); the MLM head its transform's input, activation cache
    and norm (4u) and cross-entropy's exp(logits) (B T V s). With recomputation a layer keeps
    only its input (u) and one layer's caches are rebuilt at a time (a temporary)."""
    cfg = model.config
    s = 4
    d, H, V, f = cfg.d_model, cfg.n_head, cfg.vocab_size, cfg.d_ff
    u = B * T * d * s
    rows = math.ceil(B / threads)
    scores = 2 * _attention_scores(rows, H, T, T) * s * threads
    layers = [_row("embeddings", _module_params(model.embeddings), 3 * u, 2 * u, 0.0,
                   model.embeddings)]  # fmt: skip
    for i, layer in enumerate(model.encoder):
        params = _module_params(layer)
        passes = 4 if recompute else 3  # forward + backward (2 forwards' worth) [+ again]
        flops = passes * (2 * (4 * d * d + 2 * d * f) + 4 * T * d)
        cached = _encoder_layer(B, T, d, d, f, s, cfg.dropout, "plain")
        temps = 6 * u + max(scores, 2 * B * T * f * s) + (threads - 1) * params
        temps += cached if recompute else 0
        layers.append(_row(f"layer {i}", params, u if recompute else cached, temps, flops, layer))
    head = _module_params(model.mlm_transform, model.mlm_norm, model.pooler, model.classifier)
    head += model.mlm_bias.data.nbytes
    layers.append(
        _row("head + loss", head, 4 * u + B * T * V * s, B * T * V * s + V * d * s + 2 * u,
             6 * (d * d + V * d), model.mlm_transform, model.mlm_norm, model.pooler,
             model.classifier, model.mlm_bias)
    )  # fmt: skip
    return layers


def _t5_plan(model: Any, B: int, T: int, recompute: bool, threads: int) -> list[LayerMemory]:
    """T5 with the decoder as long as the encoder (T tokens each): per encoder block
    ``_encoder_layer`` (inner = H d_kv); a decoder block adds cross-attention (its norm,
    q and merged heads over the decoder's tokens, k and v over the encoder's: 2u + 4 inner).
    Each stack keeps its position bias (1, H, T, T) and its gradient; the encoder's output
    is kept for every cross-attention. With recomputation a block keeps only its input (u;
    the position bias and the encoder's output are the stacks', counted once) and one
    block's caches are rebuilt at a time (a temporary)."""
    cfg = model.config
    s = 4
    d, H, V, f = cfg.d_model, cfg.n_head, cfg.vocab_size, cfg.d_ff
    inner = H * cfg.d_kv
    ffn = "gated" if cfg.gated else "plain"
    u = B * T * d * s
    rows = math.ceil(B / threads)
    scores = 2 * _attention_scores(rows, H, T, T, bias=True) * s * threads
    bias = 2 * H * T * T * s  # the position bias and its gradient, per stack
    layers = [_row("embeddings", _module_params(model.shared), 2 * u, 2 * u, 0.0, model.shared)]
    proj = 4 * d * inner + (3 if cfg.gated else 2) * d * f
    for stack in (model.encoder, model.decoder):
        kind = "decoder" if stack.is_decoder else "encoder"
        for i, block in enumerate(stack.blocks):
            params = _module_params(block)
            cached = _encoder_layer(B, T, d, inner, f, s, cfg.dropout, ffn)
            forward_flops = 2 * proj + 4 * T * inner
            if stack.is_decoder:
                cached += 2 * u + 4 * B * T * inner * s
                forward_flops += 2 * 4 * d * inner + 4 * T * inner
            flops = (4 if recompute else 3) * forward_flops
            kept = u if recompute else cached
            owned = [block]
            if i == 0:
                kept += bias
                owned += [stack.relative_attention_bias, stack.final_norm]
                params += _module_params(*owned[1:])
            temps = 6 * u + max(scores, 2 * B * T * f * s) + (threads - 1) * params
            temps += cached if recompute else 0
            layers.append(_row(f"{kind} {i}", params, kept, temps, flops, *owned))
    head = _module_params(model.lm_head)
    layers.append(
        _row("head + loss", head, 2 * u + B * T * V * s, B * T * V * s + V * d * s + 2 * u,
             6 * V * d, model.lm_head)
    )  # fmt: skip
    return layers


def _llama_plan(model: Any, B: int, T: int, recompute: bool, threads: int) -> list[LayerMemory]:
    """Llama, with u = B T d s and G = H / H_kv. Kept by a layer for its backward
    (``models/llama.py``): the two norms' inputs (2u) and outputs (2u, the projections'
    shared input), the rotated q (u) and k (u / G), v (u / G), the attention output and the
    merged heads (2u), the row log-sum-exp, and the SwiGLU's gate, up, sigmoid and product
    (four (B, T, d_ff) arrays): (8 + 2/G) u + 4 B T d_ff s. With recomputation only the
    layer's input (u) is kept and one layer's caches are rebuilt at a time.

    Temporaries: the backward's input gradients (about 6u), attention's two score-sized
    arrays per thread (H T T per row: the G heads of a group are stacked rows), the MLP's
    three (B, T, d_ff) gradients. Head: the final norm's input and output (2u) and
    cross-entropy's exp(logits) (B T V s) kept; the logits, the head's gradient and dx
    temporary."""
    cfg = model.config
    s = model.model.embed_tokens.weight.data.itemsize
    d, H, V, f, G = cfg.d_model, cfg.n_head, cfg.vocab_size, cfg.d_ff, cfg.groups
    u = B * T * d * s
    rows = math.ceil(B / threads)
    scores = 2 * _attention_scores(rows, H, T, T, causal=True) * s * threads
    cached = (8 + 2 / G) * u + 4 * B * T * f * s + B * T * H * s * 2
    kept = u if recompute else cached
    layers = [_row("embeddings", _module_params(model.model.embed_tokens), u, 2 * u, 0.0,
                   model.model.embed_tokens)]  # fmt: skip
    for i, layer in enumerate(model.model.layers):
        params = _module_params(layer)
        weights = sum(p.data.size for p in layer.parameters())
        flops = (4 if recompute else 3) * (2 * weights + 4 * T * d)
        mlp = 3 * rows * T * f * s * threads  # each thread's three (rows, T, d_ff) arrays
        temps = 6 * u + max(scores, mlp) + (threads - 1) * params
        temps += cached if recompute else 0
        layers.append(_row(f"layer {i}", params, kept, temps, flops, layer))
    head = _module_params(model.model.norm, model.lm_head)
    layers.append(
        _row("head + loss", head, 2 * u + B * T * V * s, B * T * V * s + V * d * s + 2 * u,
             6 * V * d, model.model.norm, model.lm_head)
    )  # fmt: skip
    return layers


#: Memory plans by model class name. A new model adds its own: a function
#: (model, batch_size, seq_len, recompute, threads) -> list[LayerMemory].
PLANS: dict[str, Callable[..., list[LayerMemory]]] = {
    "GPT": _gpt_plan,
    "BERT": _bert_plan,
    "T5": _t5_plan,
    "Llama": _llama_plan,
}


def check_training_memory(model: Any, batch_size: int, seq_len: int) -> MemoryReport | None:
    """The report of a training step, raising ``InsufficientMemoryError`` if it does not fit;
    None for a model with no plan (nothing to check)."""
    if type(_plain_model(model)).__name__ not in PLANS:
        return None
    report = memory_report(model, batch_size, seq_len)
    report.check()
    return report


def generation_bytes(model: Any, batch_size: int, prompt_len: int, total_len: int) -> int:
    """Bytes a decoder-only generation allocates: the KV cache (two (B, H, L_max, dh) arrays
    per layer, for L_max = min(total_len, context) positions, allocated at once), the
    prompt's forward (about a dozen (B, T_prompt, d) arrays at a time) and the growing
    array of ids (B, total_len) int64."""
    cfg = model.config
    s = 4
    cached = min(total_len, cfg.max_seq_len)
    kv_width = getattr(cfg, "n_kv_head", cfg.n_head) * cfg.d_model // cfg.n_head  # GQA: fewer
    kv = 2 * cfg.n_layer * batch_size * cached * kv_width * s
    prompt = 12 * batch_size * min(prompt_len, cached) * cfg.d_model * s
    return int(kv + prompt + batch_size * cfg.vocab_size * s + 8 * batch_size * total_len)


def check_generation_memory(model: Any, batch_size: int, prompt_len: int, total_len: int) -> None:
    """Raise ``InsufficientMemoryError`` before a generation whose memory would not fit."""
    available = available_memory()
    if available is None:
        return
    process = resident_bytes()
    need = process + generation_bytes(model, batch_size, prompt_len, total_len)
    if need <= available:
        return
    room = available - process
    fits = 0
    for n in (1 << k for k in range(40, -1, -1)):  # the longest power of two that fits
        if generation_bytes(model, batch_size, min(prompt_len, n), n) <= room:
            fits = n
            break
    raise InsufficientMemoryError(
        f"generating {total_len:,} tokens (prompt {prompt_len:,} + new) for {batch_size} "
        f"row(s) needs about {_mib(need)} MiB at its peak but only {_mib(available)} MiB is "
        f"available. About {fits:,} tokens in all would fit: ask for fewer new tokens "
        f"(--max-new-tokens) or give a shorter prompt."
    )
