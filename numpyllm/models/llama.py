"""Llama: the decoder-only transformer of Llama 2/3, Mistral, Qwen2, SmolLM, TinyLlama,
computed as Hugging Face's LlamaForCausalLM computes it.

    x_0    = E[ids]                                       token embeddings, no position table
    a_l    = x_{l-1} + Attn(RMSNorm_1(x_{l-1}))           pre-norm, rotary positions, GQA
    x_l    = a_l + W_down(silu(W_gate u) ⊙ W_up u),  u = RMSNorm_2(a_l)       SwiGLU MLP
    h      = RMSNorm(x_L)
    logits = h W_lm                                       untied head (tied: h E^T)

    Attn(u): q = u W_q (H heads), k = u W_k, v = u W_v (H_kv heads each); q and k rotated
             by their positions (RoPE);
             out_h = softmax(q_h k_{h//G}^T / sqrt(dh) + causal) v_{h//G}, G = H / H_kv;
             then the heads side by side times W_o.

The ops are in ``numpyllm.functional``: ``rope`` (rotary embedding and its backward, the
rotation by -θ), ``grouped_query_attention`` (H_kv key/value heads, each read by G = H / H_kv
query heads, no copies), ``swiglu``, and ``norms.rms_norm``. No biases anywhere, except the
q/k/v projections with ``attention_bias`` (Qwen2's layout).

The loss is Hugging Face's: position t predicts labels[:, t + 1] (the shift is done here),
ignoring -100; labels may also be (B, T + 1), the window's next token included.

Backward, top to bottom: dlogits = softmax - onehot (over counted positions, / their
number); the head gives dh = dlogits W_lm^T and dW_lm = h^T dlogits; each layer passes its
gradient straight along the residual stream and adds each branch's on top; the attention
branch goes back through W_o, the shared-head attention (each key/value head receives the
sum of its group's gradients), the inverse rotation of dq and dk, and the three projections,
whose input gradients add up.

Parameter names are transformers' (``model.embed_tokens.weight``,
``model.layers.0.self_attn.q_proj.weight``, ``model.layers.0.mlp.gate_proj.weight``,
``model.layers.0.input_layernorm.weight``, ``model.norm.weight``, ``lm_head.weight``); the
projection weights are stored (in, out) like every numpyllm Linear, transformers' transposed
(the loader converts once). Tied: no ``lm_head``, the logits use the embedding.

Shapes: B batch, T new tokens, P cached tokens, d = d_model, H heads, H_kv key/value heads,
dh = d / H, d_ff the MLP width, V vocabulary. ``input_ids`` must be 2-D integers (B, T).

Inference with a KV cache, as GPT: ``forward(ids, past_key_values=pkv, use_cache=True)``
returns one (k, v) pair per layer, each (B, H_kv, P + T, dh), keys already rotated; positions
continue at P. Generation uses ``incremental_decoder`` (``numpyllm.models.llama_decoding``),
with preallocated buffers. A cached forward is inference only: its backward raises.

Initialisation follows transformers: every weight N(0, init_std²), norm weights 1, biases 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from numpyllm.functional.grouped_query_attention import (
    grouped_query_attention_backward,
    grouped_query_attention_forward,
)
from numpyllm.functional.linear import linear_backward
from numpyllm.functional.losses import cross_entropy_backward, cross_entropy_forward
from numpyllm.functional.rope import rope_backward, rope_forward, rope_tables
from numpyllm.functional.swiglu import swiglu_backward, swiglu_forward
from numpyllm.models import checks
from numpyllm.models.output import ModelOutput
from numpyllm.nn.execution import Model, run_forward
from numpyllm.nn.linear import (
    Embedding,
    Linear,
    fused_input_to_keep,
    fused_project,
    fused_project_backward,
)
from numpyllm.nn.module import Module, ModuleList
from numpyllm.nn.norms import RMSNorm

__all__ = ["Llama", "LlamaConfig"]

IGNORE_INDEX = -100

KVCache = list[tuple[np.ndarray, np.ndarray]]


@dataclass
class LlamaConfig:
    """Llama hyper-parameters (transformers' LlamaConfig names in brackets).

    vocab_size      V                                                  [vocab_size]
    n_layer         decoder layers                                     [num_hidden_layers]
    n_head          query heads H                                      [num_attention_heads]
    d_model         width of the residual stream                       [hidden_size]
    max_seq_len     context length (RoPE has no table to outgrow; this bounds inputs)
                                                                       [max_position_embeddings]
    n_kv_head       key/value heads H_kv, dividing H; None = H         [num_key_value_heads]
    d_ff            SwiGLU width; None = 8/3 d_model rounded up to a multiple of 8, which
                    gives the three-matrix MLP about the parameters of a 4 d_model
                    two-matrix one                                     [intermediate_size]
    rope_theta      base of the rotary frequencies                     [rope_theta]
    rms_norm_eps                                                       [rms_norm_eps]
    tie_word_embeddings  logits from the embedding instead of lm_head  [tie_word_embeddings]
    attention_bias  biases on q, k and v (Qwen2)                       (Qwen2's layout)
    init_std        std of the normal initialisation                   [initializer_range]
    sliding_window  Mistral's attention window, or None. numpyllm computes full causal
                    attention, which equals windowed attention only while a sequence fits
                    in the window, so longer sequences are refused     [sliding_window]
    """

    vocab_size: int
    n_layer: int
    n_head: int
    d_model: int
    max_seq_len: int
    n_kv_head: int | None = None
    d_ff: int | None = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    init_std: float = 0.02
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None and isinstance(self.d_model, int):
            self.d_ff = 8 * -(-self.d_model // 3)  # 8/3 d rounded up to a multiple of 8
        checks.positive_ints(self, "vocab_size", "n_layer", "n_head", "d_model", "max_seq_len",
                             "n_kv_head", "d_ff")  # fmt: skip
        checks.divisible(self, "d_model", by="n_head")
        checks.divisible(self, "n_head", by="n_kv_head")
        if self.head_dim % 2:
            raise ValueError(
                f"LlamaConfig: the head dimension d_model / n_head = {self.head_dim} must be "
                "even (rotary embeddings turn pairs of features)"
            )
        checks.positive_floats(self, "rope_theta", "rms_norm_eps", "init_std")
        if self.sliding_window is not None:
            checks.positive_ints(self, "sliding_window")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def groups(self) -> int:
        """Query heads per key/value head, G = H / H_kv."""
        assert self.n_kv_head is not None, "__post_init__ sets n_kv_head"
        return self.n_head // self.n_kv_head


@lru_cache(maxsize=8)
def _rope_tables(head_dim: int, length: int, theta: float, dtype: np.dtype) -> tuple:
    """cos and sin for positions 0 .. length - 1, shared by every model with these settings."""
    cos, sin = rope_tables(head_dim, length, 0, theta, dtype)
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin


class LlamaAttention(Module):
    """Causal self-attention with rotary positions and grouped key/value heads."""

    def __init__(self, config: LlamaConfig, rng: np.random.Generator) -> None:
        super().__init__()
        d, dh, std, bias = config.d_model, config.head_dim, config.init_std, config.attention_bias
        assert config.n_kv_head is not None, "LlamaConfig.__post_init__ sets n_kv_head"
        n_kv_head = config.n_kv_head
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, n_kv_head, dh
        self.q_proj = Linear(d, config.n_head * dh, bias=bias, rng=rng, std=std)
        self.k_proj = Linear(d, n_kv_head * dh, bias=bias, rng=rng, std=std)
        self.v_proj = Linear(d, n_kv_head * dh, bias=bias, rng=rng, std=std)
        self.o_proj = Linear(config.n_head * dh, d, bias=False, rng=rng, std=std)
        # (attention cache, heads, rope tables, x): what the backward reads
        self._cache: tuple[tuple, np.ndarray, tuple, np.ndarray] | None = None

    def forward(
        self,
        x: np.ndarray,
        rope: tuple[np.ndarray, np.ndarray],
        mask: np.ndarray | None = None,
        past_kv: tuple[np.ndarray, np.ndarray] | None = None,
        use_cache: bool = False,
    ):
        """x (B, T, d), rope = (cos, sin) (T, dh) of the new positions, mask boolean
        (B, 1, 1, P + T) or None -> y (B, T, d), or (y, (k, v)) with k, v (B, H_kv, P + T, dh)."""
        B, T, _ = x.shape
        H, Hkv, dh = self.n_head, self.n_kv_head, self.head_dim
        qkv = fused_project(self.projections(), x)  # (B, T, (H + 2 Hkv) dh), one product
        q = qkv[..., : H * dh].reshape(B, T, H, dh).transpose(0, 2, 1, 3)  # (B, H, T, dh) view
        k = qkv[..., H * dh : (H + Hkv) * dh].reshape(B, T, Hkv, dh).transpose(0, 2, 1, 3)
        v = qkv[..., (H + Hkv) * dh :].reshape(B, T, Hkv, dh).transpose(0, 2, 1, 3)
        q, _ = rope_forward(q, *rope)  # rotated, C-ordered (B, H, T, dh)
        k, _ = rope_forward(k, *rope)  # (B, Hkv, T, dh)
        v = np.ascontiguousarray(v)  # (B, Hkv, T, dh), so that no cache holds all of qkv
        del qkv
        if past_kv is not None:  # the cached keys are stored rotated: only the new ones turn
            k = np.concatenate((past_kv[0], k), axis=2)  # (B, Hkv, P + T, dh)
            v = np.concatenate((past_kv[1], v), axis=2)
        heads, attn_cache = grouped_query_attention_forward(q, k, v, causal=True, mask=mask)
        merged = heads.transpose(0, 2, 1, 3).reshape(B, T, H * dh)  # the heads side by side
        y = self.o_proj(merged)  # (B, T, H dh) -> (B, T, d)
        self._cache = (attn_cache, heads, rope, fused_input_to_keep(self.projections(), x))
        return (y, (k, v)) if use_cache else y

    def projections(self) -> list[Linear]:
        """q, k and v: one input, their outputs side by side in one product."""
        return [self.q_proj, self.k_proj, self.v_proj]

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (B, T, d) -> dx (B, T, d): the three projections' input gradients added
        (one product, ``fused_project_backward``)."""
        assert self._cache is not None, "LlamaAttention.backward needs a forward first"
        (attn_cache, heads, rope, x), self._cache = self._cache, None
        B, T, _ = dout.shape
        H, Hkv, dh = self.n_head, self.n_kv_head, self.head_dim
        dmerged = self.o_proj.backward(dout)  # (B, T, H dh)
        dheads = dmerged.reshape(B, T, H, dh).transpose(0, 2, 1, 3)
        dq, dk, dv = grouped_query_attention_backward(dheads, attn_cache, out=heads)
        del attn_cache, heads, dheads, dmerged
        dqkv = np.empty((B, T, (H + 2 * Hkv) * dh), dtype=dout.dtype)  # laid out as qkv
        dqkv[..., : H * dh].reshape(B, T, H, dh)[...] = rope_backward(dq, rope).transpose(
            0, 2, 1, 3
        )  # the rotation by -θ, (B, H, T, dh) written as (B, T, H, dh)
        dqkv[..., H * dh : (H + Hkv) * dh].reshape(B, T, Hkv, dh)[...] = rope_backward(
            dk, rope
        ).transpose(0, 2, 1, 3)  # each group's gradients already summed into its head
        dqkv[..., (H + Hkv) * dh :].reshape(B, T, Hkv, dh)[...] = dv.transpose(0, 2, 1, 3)
        return fused_project_backward(self.projections(), dqkv, x)


class LlamaMLP(Module):
    """SwiGLU: down(silu(gate(u)) ⊙ up(u))."""

    def __init__(self, config: LlamaConfig, rng: np.random.Generator) -> None:
        super().__init__()
        d, std = config.d_model, config.init_std
        assert config.d_ff is not None, "LlamaConfig.__post_init__ sets d_ff"
        f = config.d_ff
        self.gate_proj = Linear(d, f, bias=False, rng=rng, std=std)
        self.up_proj = Linear(d, f, bias=False, rng=rng, std=std)
        self.down_proj = Linear(f, d, bias=False, rng=rng, std=std)
        self._cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (B, T, d) -> (B, T, d). Unlike q/k/v, gate and up stay two products: side by
        side, their halves would be strided views, and NumPy's element-wise loops over
        those (SwiGLU's ten passes) cost more than the fused product saves."""
        hidden, self._cache = swiglu_forward(self.gate_proj(x), self.up_proj(x))  # (B, T, d_ff)
        return self.down_proj(hidden)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        assert self._cache is not None, "LlamaMLP.backward needs a forward first"
        # dhidden and the cache are spent: the gradients take their memory
        dgate, dup = swiglu_backward(self.down_proj.backward(dout), self._cache, overwrite=True)
        self._cache = None
        dx = self.gate_proj.backward(dgate)
        dx += self.up_proj.backward(dup)
        return dx


class LlamaDecoderLayer(Module):
    """Pre-norm block:  a = x + attn(norm_1(x)),  y = a + mlp(norm_2(a)).

    Backward: each residual branch adds its gradient to the one flowing straight through,
        da = dy + d(norm_2 branch)(dy),   dx = da + d(norm_1 branch)(da).
    """

    def __init__(self, config: LlamaConfig, rng: np.random.Generator) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config, rng)
        self.post_attention_layernorm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.mlp = LlamaMLP(config, rng)

    def forward(
        self,
        x: np.ndarray,
        rope: tuple[np.ndarray, np.ndarray],
        mask: np.ndarray | None = None,
        past_kv: tuple[np.ndarray, np.ndarray] | None = None,
        use_cache: bool = False,
    ):
        """x (B, T, d) -> (B, T, d), or (y, (k, v)) with ``use_cache``."""
        branch = self.self_attn(self.input_layernorm(x), rope, mask, past_kv, use_cache)
        present = None
        if use_cache:
            branch, present = branch
        branch += x  # a: nothing caches the attention's output, so add in place
        y = self.mlp(self.post_attention_layernorm(branch))
        y += branch
        return (y, present) if use_cache else y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        da = self.post_attention_layernorm.backward(self.mlp.backward(dout))
        da += dout
        dx = self.input_layernorm.backward(self.self_attn.backward(da))
        dx += da
        return dx


class LlamaModel(Module):
    """The stack without its head: embedding, decoder layers, final norm."""

    def __init__(self, config: LlamaConfig, rng: np.random.Generator) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.d_model, rng=rng,
                                      std=config.init_std)  # fmt: skip
        self.layers = ModuleList([LlamaDecoderLayer(config, rng) for _ in range(config.n_layer)])
        self.norm = RMSNorm(config.d_model, config.rms_norm_eps)


class Llama(Model):
    """Llama causal language model (see the module docstring for the maths).

    How a pass runs (the batch split over cores, ``num_threads``; recomputation,
    ``recompute_activations``; BLAS threads, ``blas_threads``) is ``numpyllm.nn.execution``'s
    business, as for every model; a cached forward (generation) is never split.
    """

    config: LlamaConfig
    #: the loss scores labels[:, 1:] against the logits before them (the model shifts)
    shifts_labels = True


    def __init__(self, config: LlamaConfig, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(config, LlamaConfig):
            raise TypeError(f"Llama expects a LlamaConfig, got {type(config).__name__}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.config = config
        self.model = LlamaModel(config, rng)
        if config.tie_word_embeddings:
            self.lm_head = None  # logits use model.embed_tokens.weight
        else:
            self.lm_head = Linear(config.d_model, config.vocab_size, bias=False, rng=rng,
                                  std=config.init_std)  # fmt: skip
        self._state: dict | None = None

    def repeated_blocks(self) -> list[Module]:
        return list(self.model.layers)

    def rope(self, offset: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(cos, sin) (length, dh) of positions offset .. offset + length - 1, model's dtype."""
        cfg = self.config
        dtype = self.model.embed_tokens.weight.data.dtype  # (self.dtype walks every module)
        cos, sin = _rope_tables(cfg.head_dim, cfg.max_seq_len, float(cfg.rope_theta), dtype)
        return cos[offset : offset + length], sin[offset : offset + length]

    # ---- input checks --------------------------------------------------------------
    def _check_ids(self, input_ids, past_len: int) -> np.ndarray:
        ids = checks.token_ids(input_ids, self.config.vocab_size)
        total = past_len + ids.shape[1]
        window = self.config.sliding_window
        if window is not None and total > window:
            raise ValueError(
                f"sequence of {total} tokens is longer than the model's sliding_window={window}: "
                "beyond it each token attends only to the last sliding_window tokens, and "
                "numpyllm computes full attention; use at most sliding_window tokens"
            )
        if total > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {total} tokens ({past_len} cached + {ids.shape[1]} new) exceeds "
                f"the context length max_seq_len={self.config.max_seq_len}"
            )
        return ids

    def _check_past(self, past_key_values, batch: int) -> int:
        if past_key_values is None:
            return 0
        cfg = self.config
        if len(past_key_values) != cfg.n_layer:
            raise ValueError(
                f"past_key_values must hold one (k, v) pair per layer ({cfg.n_layer}), "
                f"got {len(past_key_values)}"
            )
        lengths = set()
        for k, v in past_key_values:
            k, v = np.asarray(k), np.asarray(v)
            if k.ndim != 4 or k.shape != v.shape or k.shape[:2] != (batch, cfg.n_kv_head) or (
                k.shape[3] != cfg.head_dim
            ):
                raise ValueError(
                    "past_key_values entries must be (k, v) of shape (B, H_kv, P, dh) = "
                    f"({batch}, {cfg.n_kv_head}, P, {cfg.head_dim}), got {k.shape} and {v.shape}"
                )
            lengths.add(k.shape[2])
        if len(lengths) > 1:
            raise ValueError("past_key_values layers hold different cached lengths")
        return int(lengths.pop())

    # ---- forward / backward ----------------------------------------------------------
    def forward(
        self,
        input_ids: np.ndarray,
        labels: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
    ) -> ModelOutput:
        """Logits (B, T, V); the loss (HF's shift) when ``labels`` are given.

        Positions are P .. P + T - 1 whatever the padding (transformers' default position
        ids when no mask is given). A batch of several rows may be split over the cores
        (``numpyllm.nn.execution``).
        """
        if past_key_values is not None and len(past_key_values) == 0:
            past_key_values = None
        ids = np.asarray(input_ids)
        batch = ids.shape[0] if ids.ndim >= 1 else 0
        past_len = self._check_past(past_key_values, batch)
        ids = self._check_ids(ids, past_len)
        B, T = ids.shape
        mask = checks.padding_mask(attention_mask, B, past_len + T)
        vocab = self.config.vocab_size
        targets = None if labels is None else checks.shifted_targets(labels, (B, T), vocab)
        self._state = None
        # The parts write their logits into one (B, T, V) buffer: no concatenation after a split
        logits = np.empty((B, T, vocab), dtype=self.model.embed_tokens.weight.data.dtype)
        return run_forward(
            self,
            {"ids": ids, "mask": mask, "targets": targets, "logits_out": logits},
            batch=B,
            tokens=B * T,
            scored=None if targets is None else targets != IGNORE_INDEX,
            cached=use_cache or past_key_values is not None,  # inference with a KV cache
            past_key_values=past_key_values,
            past_len=past_len,
            use_cache=use_cache,
        )

    def _forward(
        self,
        ids: np.ndarray,
        mask: np.ndarray | None,
        targets: np.ndarray | None,
        past_key_values: KVCache | None = None,
        past_len: int = 0,
        use_cache: bool = False,
        logits_out: np.ndarray | None = None,
    ) -> ModelOutput:
        """The forward on checked inputs: ``targets`` already shifted, ``mask`` boolean
        (B, 1, 1, P + T) or None. Logits are written to ``logits_out`` (B, T, V) when given."""
        B, T = ids.shape
        rope = self.rope(past_len, T)
        x = self.model.embed_tokens(ids)  # (B, T) -> (B, T, d)
        presents: KVCache = []
        for i, layer in enumerate(self.model.layers):
            past = None if past_key_values is None else past_key_values[i]
            x = layer(x, rope, mask, past, use_cache)
            if use_cache:
                x, present = x
                presents.append(present)
        hidden = self.model.norm(x)  # (B, T, d)
        embed = self.model.embed_tokens.weight.data  # (V, d)
        if logits_out is None:
            logits_out = np.empty((B, T, len(embed)), dtype=hidden.dtype)
        logits = logits_out  # (B, T, V)
        if self.lm_head is None:  # tied: h E^T
            np.matmul(hidden.reshape(B * T, -1), embed.T, out=logits.reshape(B * T, -1))
            head_input = hidden
        else:  # the head's input is kept here, as Linear.forward would keep it
            self.lm_head.project(hidden, out=logits)  # (B, T, d) -> (B, T, V)
            head_input = fused_input_to_keep([self.lm_head], hidden)
        loss = loss_cache = None
        if targets is not None:
            loss_value, loss_cache = cross_entropy_forward(logits, targets, IGNORE_INDEX)
            loss = float(loss_value)
        self._state = {
            "cached": past_key_values is not None or use_cache,
            "logits_shape": logits.shape,
            "head_input": head_input,
            "loss_cache": loss_cache,
        }
        return ModelOutput(logits=logits, loss=loss, hidden_states=hidden,
                           past_key_values=presents if use_cache else None)  # fmt: skip

    def _backward(self, dlogits: np.ndarray | None, dloss: float = 1.0) -> None:
        """Accumulate dL/dθ into every parameter's ``.grad`` for the last forward, from dloss
        (1 by default) times its loss or from a given ``dlogits`` (B, T, V)."""
        state = self._state
        if state is None:
            raise RuntimeError(
                "Llama.backward needs a forward call first (one backward per forward)"
            )
        if state["cached"]:
            raise RuntimeError(
                "Llama.backward is not available after a forward with past_key_values / "
                "use_cache: a cached forward is inference only; run it without a cache"
            )
        if dlogits is None:
            if state["loss_cache"] is None:
                raise RuntimeError(
                    "Llama.backward needs a loss: call the model with labels=..., or pass "
                    "dlogits=..."
                )
            dlogits = cross_entropy_backward(dloss, state["loss_cache"], overwrite=True)
        else:
            dlogits = np.asarray(dlogits)
            if dlogits.shape != state["logits_shape"]:
                raise ValueError(
                    f"dlogits must have shape {state['logits_shape']}, got {dlogits.shape}"
                )
        self._state = None
        embed = self.model.embed_tokens.weight
        if self.lm_head is None:
            dx, dembed_t, _ = linear_backward(
                dlogits, (state["head_input"], embed.data.T, False), need_weight=embed.requires_grad
            )  # (B, T, d), (d, V)
            if dembed_t is not None:  # (a frozen embedding gets no gradient product)
                embed.grad += dembed_t.T
        else:
            dx = self.lm_head.backward_from_input(dlogits, state["head_input"])  # (B, T, d)
        del dlogits, state
        dx = self.model.norm.backward(dx)
        for layer in reversed(self.model.layers):
            dx = layer.backward(dx)
        self.model.embed_tokens.backward(dx)  # scatter-add into the embedding's gradient

    # ---- cost model --------------------------------------------------------------------
    def estimate_flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token, 6 N + 12 L T d (as ``GPT.estimate_flops_per_token``):
        every parameter but the norm weights is in a matmul (the embedding counts through
        the head, tied or not: an untied model's input table is a lookup, not counted)."""
        cfg = self.config
        T = cfg.max_seq_len if seq_len is None else seq_len
        norms = (2 * cfg.n_layer + 1) * cfg.d_model
        lookup = 0 if self.lm_head is None else cfg.vocab_size * cfg.d_model
        n_matmul = self.num_parameters() - norms - lookup
        return float(6 * n_matmul + 12 * cfg.n_layer * T * cfg.d_model)

    # ---- generation and checkpoints ----------------------------------------------------
    def incremental_decoder(self, batch: int = 1, max_len: int | None = None):
        """This model's forward for generation, one step at a time, keys and values cached
        in preallocated (B, H_kv, max_len, dh) buffers (``numpyllm.models.llama_decoding``)."""
        from numpyllm.models.llama_decoding import LlamaDecoder

        return LlamaDecoder(self, batch, max_len)

    def generate(self, input_ids, **kwargs) -> np.ndarray:
        """Continue ``input_ids`` (B, T) one token at a time with a KV cache; returns
        (B, T + new). Options as in ``numpyllm.generation.generate_decoder_only``:
        max_new_tokens / max_length, do_sample, temperature, top_k, top_p, eos_token_id,
        pad_token_id, seed, crop_context."""
        from numpyllm.generation import generate_decoder_only

        return generate_decoder_only(self, input_ids, **kwargs)

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32) -> Llama:
        """Load a transformers LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM
        folder (config.json + safetensors, single or sharded)."""
        from numpyllm.hf import load_llama

        return load_llama(path, dtype=dtype)

    def save_pretrained(self, path) -> None:
        """Write config.json + model.safetensors that LlamaForCausalLM.from_pretrained loads
        (Qwen2ForCausalLM with ``attention_bias``)."""
        from numpyllm.hf import save_llama

        save_llama(self, path)
