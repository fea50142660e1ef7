"""GPT-2: a decoder-only transformer, computed as Hugging Face's GPT2LMHeadModel computes it.

    x_0   = wte[ids] + wpe[pos]                       token + learned position embeddings
    a_l   = x_{l-1} + Attn(LN_1(x_{l-1}))             pre-LayerNorm causal self-attention
    x_l   = a_l + MLP(LN_2(a_l))                      MLP(u) = act(u W_fc + b_fc) W_proj + b_proj
    h     = LN_f(x_L)
    logits = h wte^T                                  the output head is the token embedding (tied)

Parameter names are GPT-2's own (``wte.weight``, ``h.0.attn.c_attn.weight``, ...) and every
projection weight is stored (in, out) as GPT-2's Conv1D stores it, so a checkpoint loads with
no renaming and no transposes.

Shapes: B batch, T new tokens, P cached (past) tokens, d = d_model, H heads, dh = d / H,
V vocabulary. ``input_ids`` must be a 2-D integer array (B, T); a 1-D array is refused with a
ValueError rather than silently treated as one sequence.

Inference with a KV cache: ``forward(ids, past_key_values=pkv, use_cache=True)`` returns in
``past_key_values`` a list, one (k, v) pair per layer, each (B, H, P + T, dh); pass it back with
the next token(s). Positions continue at P. A forward given ``past_key_values`` is inference
only: its ``backward`` raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from numpyllm.functional.attention import attention_backward, attention_forward
from numpyllm.functional.losses import cross_entropy_backward, cross_entropy_forward
from numpyllm.models import checks
from numpyllm.models.gpt_decoding import GPTDecoder
from numpyllm.models.output import ModelOutput
from numpyllm.nn.execution import (
    BLOCKS,
    BlockSizes,
    Model,
    attention_row_blocks,
    row_blocks,
    run_forward,
)
from numpyllm.nn.feed_forward import ACTIVATIONS, activation_pair
from numpyllm.nn.init import child_rng
from numpyllm.nn.linear import Embedding, Linear
from numpyllm.nn.module import Module, ModuleList, forward_cache
from numpyllm.nn.norms import Dropout, LayerNorm

IGNORE_INDEX = -100


KVCache = list[tuple[np.ndarray, np.ndarray]]


@dataclass
class GPTConfig:
    """GPT-2 hyper-parameters (Hugging Face names in brackets).

    vocab_size   V, number of token ids                       [vocab_size]
    n_layer      number of transformer blocks                 [n_layer]
    n_head       attention heads per block                    [n_head]
    d_model      width of the residual stream                 [n_embd]
    max_seq_len  context length: number of learned positions  [n_positions]
    d_ff         MLP hidden width, default 4 * d_model        [n_inner]
    dropout      on the embeddings and on each residual branch [embd_pdrop, resid_pdrop]
    layer_norm_eps                                            [layer_norm_epsilon]
    activation   "gelu_new" (tanh GELU, GPT-2's), "gelu" (erf), "relu", ...  [activation_function]
    init_std     std of the normal initialisation             [initializer_range]

    GPT-2 also drops attention probabilities ([attn_pdrop]); the attention here has no
    dropout, so with dropout on, training is not bit-for-bit GPT-2's (eval is exact).
    """

    vocab_size: int
    n_layer: int
    n_head: int
    d_model: int
    max_seq_len: int
    d_ff: int | None = None
    dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    activation: str = "gelu_new"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        checks.positive_ints(self, "vocab_size", "n_layer", "n_head", "d_model", "d_ff",
                             "max_seq_len")  # fmt: skip
        checks.divisible(self, "d_model", by="n_head")
        checks.probability(self, "dropout")
        checks.positive_floats(self, "layer_norm_eps", "init_std")
        checks.one_of(self, "activation", ACTIVATIONS)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


class CausalSelfAttention(Module):
    """Multi-head causal self-attention with GPT-2's fused projection.

        [q | k | v] = x W_attn + b_attn            one (d, 3d) matmul for all three
        head_i      = softmax(q_i k_i^T / sqrt(dh) + causal/padding mask) v_i
        y           = [head_1 | ... | head_H] W_proj + b_proj

    The heads are views into the fused (B, T, 3d) projection: splitting them costs no copy.
    """

    blocks: BlockSizes = BLOCKS

    def __init__(
        self,
        d_model: int,
        n_head: int,
        rng: np.random.Generator,
        std: float,
        out_std: float,
        dtype=np.float32,
    ) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = Linear(d_model, 3 * d_model, rng=rng, std=std, dtype=dtype)
        self.c_proj = Linear(d_model, d_model, rng=rng, std=out_std, dtype=dtype)
        # (per block of rows: its slice and attention cache), the heads' output (B, T, d)
        self._cache: tuple[list[tuple[slice, tuple]], np.ndarray] | None = None

    def forward(
        self,
        x: np.ndarray,
        mask: np.ndarray | None = None,
        past_kv: tuple[np.ndarray, np.ndarray] | None = None,
        use_cache: bool = False,
    ):
        """x (B, T, d); mask boolean broadcastable to (B, H, T, P + T), True = may attend.

        Returns y (B, T, d), or (y, (k, v)) with k, v (B, H, P + T, dh) when ``use_cache``.
        """
        B, T, d = x.shape
        H = self.n_head
        qkv = self.c_attn.project(x)  # (B, T, d) -> (B, T, 3d); x is rebuilt for the backward
        qkv = qkv.reshape(B, T, 3, H, d // H).transpose(2, 0, 3, 1, 4)  # -> (3, B, H, T, dh) view
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, H, T, dh), strided views
        if past_kv is not None:
            k = np.concatenate((past_kv[0], k), axis=2)  # (B, H, P, dh) + (B, H, T, dh)
            v = np.concatenate((past_kv[1], v), axis=2)  # -> (B, H, P + T, dh)
        merged = np.empty((B, T, d), dtype=q.dtype)  # the heads side by side: c_proj's input
        merged_heads = merged.reshape(B, T, H, d // H).transpose(0, 2, 1, 3)  # (B, H, T, dh) view
        attn_caches: list[tuple[slice, tuple]] = []
        for rows in attention_row_blocks(B, self.blocks.attention_elements, H * T * k.shape[2]):
            # causal with T < P + T is end-aligned: query i sees keys 0 .. P + i
            out, attn_cache = attention_forward(
                q[rows], k[rows], v[rows], causal=True, mask=None if mask is None else mask[rows]
            )  # (b, H, T, dh)
            merged_heads[rows] = out  # written into (B, T, d) order: c_proj reads it as is
            attn_caches.append((rows, attn_cache))
        y = self.c_proj(merged)  # (B, T, d) -> (B, T, d)
        self._cache = (attn_caches, merged)  # merged: also c_proj's cached input, no copy
        return (y, (k, v)) if use_cache else y

    def backward(self, dout: np.ndarray, norm: LayerNorm) -> np.ndarray:
        """dout (B, T, d) -> dx (B, T, d); the three projections' gradients land in one (B, T, 3d)
        buffer so c_attn's backward is one matmul. x is rebuilt from ``norm``, which made it."""
        return self.c_attn.backward_from_input(self._dqkv(dout), norm.output())  # -> (B, T, d)

    def parameter_backward(self, dout: np.ndarray, norm: LayerNorm) -> None:
        """The parameters' gradients alone, for a block below which nothing trains: c_attn's
        dx product is not formed."""
        self.c_attn.parameter_backward(self._dqkv(dout), norm.output())

    def _dqkv(self, dout: np.ndarray) -> np.ndarray:
        """dout (B, T, d) -> d[q | k | v] (B, T, 3d), c_proj's gradients added on the way."""
        (attn_caches, merged), self._cache = forward_cache(self._cache, self), None
        B, T, d = merged.shape
        H = self.n_head
        dmerged = self.c_proj.backward(dout)  # (B, T, d)
        dheads = dmerged.reshape(B, T, H, d // H).transpose(0, 2, 1, 3)  # -> (B, H, T, dh) view
        heads = merged.reshape(B, T, H, d // H).transpose(0, 2, 1, 3)  # forward's output, view
        dqkv = np.empty((B, T, 3 * d), dtype=dmerged.dtype)  # (B, T, 3d)
        dqkv_heads = dqkv.reshape(B, T, 3, H, d // H).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, dh)
        for rows, attn_cache in attn_caches:
            dq, dk, dv, _ = attention_backward(dheads[rows], attn_cache, out=heads[rows])
            dqkv_heads[0, rows] = dq  # each (b, H, T, dh)
            dqkv_heads[1, rows] = dk
            dqkv_heads[2, rows] = dv
        return dqkv


class MLP(Module):
    """MLP(u) = act(u W_fc + b_fc) W_proj + b_proj, with W_fc (d, d_ff) and W_proj (d_ff, d)."""

    blocks: BlockSizes = BLOCKS

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str,
        rng: np.random.Generator,
        std: float,
        out_std: float,
        dtype=np.float32,
    ) -> None:
        super().__init__()
        self.act_forward, self.act_backward = activation_pair(activation)
        self.c_fc = Linear(d_model, d_ff, rng=rng, std=std, dtype=dtype)
        self.c_proj = Linear(d_ff, d_model, rng=rng, std=out_std, dtype=dtype)
        self._cache: np.ndarray | None = None  # the pre-activation (B, T, d_ff)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (B, T, d) -> (B, T, d). Rows are independent, so the forward runs over blocks of
        ``blocks.mlp_rows`` rows: the activation and its temporaries (rows, d_ff) cost one
        block's worth. Only the pre-activation is kept: the backward recomputes the
        activation (memory over one pass)."""
        x2 = x.reshape(-1, x.shape[-1])  # (N, d)
        d_ff = self.c_fc.out_features
        pre = np.empty((len(x2), d_ff), dtype=x2.dtype)  # (N, d_ff)
        out = np.empty_like(x2)  # (N, d)
        for r in row_blocks(len(x2), self.blocks.mlp_rows):
            pre_r = self.c_fc.project(x2[r], out=pre[r])  # (rows, d_ff)
            hidden, _ = self.act_forward(pre_r)
            self.c_proj.project(hidden, out=out[r])  # (rows, d_ff) -> (rows, d)
        self._cache = pre.reshape(*x.shape[:-1], -1)
        return out.reshape(x.shape)

    def forward_pre(self, x: np.ndarray) -> None:
        """Only the part of the forward the backward needs: the pre-activation, kept."""
        self._cache = self.c_fc.project(x)  # (B, T, d) -> (B, T, d_ff)

    def backward(self, dout: np.ndarray, norm: LayerNorm) -> np.ndarray:
        """dout (B, T, d) -> dx (B, T, d); the input x is rebuilt from ``norm``, which made it.

        Rows are independent until the weight gradients, which are sums over rows, so the
        backward runs over blocks of rows and adds each block's share into the gradients:
        the (rows, d_ff) temporaries (activation, its cache, its gradient) then cost one
        block's worth, not the batch's (they are the largest arrays of a block's backward).
        """
        pre, self._cache = forward_cache(self._cache, self), None
        d_ff = pre.shape[-1]
        pre2 = pre.reshape(-1, d_ff)  # (N, d_ff)
        dout2 = dout.reshape(-1, dout.shape[-1])  # (N, d)
        x2 = norm.output().reshape(dout2.shape)  # (N, d)
        dx = np.empty_like(x2)
        for r in row_blocks(len(pre2), self.blocks.mlp_rows):
            hidden, act_cache = self.act_forward(pre2[r])  # (rows, d_ff) again, and its cache
            dhidden = self.c_proj.backward_from_input(dout2[r], hidden)  # (rows, d_ff)
            del hidden  # freed before the activation's backward allocates
            dpre = self.act_backward(dhidden, act_cache)
            dx[r] = self.c_fc.backward_from_input(dpre, x2[r])  # (rows, d_ff) -> (rows, d)
        return dx.reshape(dout.shape)


class Block(Module):
    """Pre-LayerNorm transformer block:

        a = x + drop(attn(ln_1(x)))
        y = a + drop(mlp(ln_2(a)))

    Backward: each residual branch adds its gradient to the one flowing straight through,
        da = dy + d(ln_2 branch)(dy),   dx = da + d(ln_1 branch)(da).
    dx is formed only for a caller below which something trains (``backward``'s
    ``need_input``).
    """

    def __init__(self, config: GPTConfig, rng: np.random.Generator, dtype=np.float32) -> None:
        super().__init__()
        d = config.d_model
        out_std = config.init_std / math.sqrt(2 * config.n_layer)  # scaled residual projections
        self.ln_1 = LayerNorm(d, eps=config.layer_norm_eps, dtype=dtype)
        self.attn = CausalSelfAttention(
            d, config.n_head, rng, std=config.init_std, out_std=out_std, dtype=dtype
        )
        self.ln_2 = LayerNorm(d, eps=config.layer_norm_eps, dtype=dtype)
        assert config.d_ff is not None, "GPTConfig.__post_init__ sets d_ff"
        self.mlp = MLP(
            d, config.d_ff, config.activation, rng, config.init_std, out_std=out_std, dtype=dtype
        )
        self.drop_attn = Dropout(config.dropout, rng=child_rng(rng))
        self.drop_mlp = Dropout(config.dropout, rng=child_rng(rng))

    def forward(
        self,
        x: np.ndarray,
        mask: np.ndarray | None = None,
        past_kv: tuple[np.ndarray, np.ndarray] | None = None,
        use_cache: bool = False,
    ) -> Any:
        """x (B, T, d) -> (B, T, d), or (out, (k, v)) when ``use_cache``."""
        branch = self.attn(self.ln_1(x), mask=mask, past_kv=past_kv, use_cache=use_cache)
        present = None
        if use_cache:
            branch, present = branch
        a = self.drop_attn(branch)  # (B, T, d), a fresh array
        a += x  # residual, in place: nothing caches the branch's output
        y = self.drop_mlp(self.mlp(self.ln_2(a)))  # (B, T, d)
        y += a
        return (y, present) if use_cache else y

    def rebuild_caches(self, x: np.ndarray, mask: np.ndarray | None = None, *_: object) -> None:
        """The forward up to what the backward reads, for a recomputed block: the MLP's
        activation and output projection (a third of the forward's arithmetic) are skipped,
        as nothing keeps them."""
        a = self.drop_attn(self.attn(self.ln_1(x), mask=mask))
        a += x
        self.mlp.forward_pre(self.ln_2(a))
        self.drop_mlp(a)  # only to draw its mask again (same Generator state); output unused

    def backward(self, dout: np.ndarray, need_input: bool = True) -> np.ndarray | None:
        """dout (B, T, d) -> dx (B, T, d). With ``need_input=False`` (nothing below the block
        trains: the lowest block of a LoRA model over frozen embeddings) and ln_1 frozen,
        the first branch's input gradient (c_attn's dx product, ln_1's backward) is not
        formed and None is returned."""
        da = self.ln_2.backward(self.mlp.backward(self.drop_mlp.backward(dout), self.ln_2))
        da += dout  # straight-through path of the second residual
        dbranch = self.drop_attn.backward(da)
        if not need_input and not self.ln_1.trainable_parameters():
            self.attn.parameter_backward(dbranch, self.ln_1)
            self.ln_1.release()
            return None
        dx = self.ln_1.backward(self.attn.backward(dbranch, self.ln_1))
        dx += da  # straight-through path of the first residual
        return dx


class GPT(Model):
    """GPT-2 language model with a tied output head (see the module docstring for the maths).

    How a pass runs (the batch split over cores, ``num_threads``; recomputation,
    ``recompute_activations``; BLAS threads, ``blas_threads``) is ``numpyllm.nn.execution``'s
    business, as for every model; generation (``use_cache``) is never split.
    """

    #: the loss scores labels[:, 1:] against the logits before them (the model shifts)
    shifts_labels = True

    def __init__(self, config: GPTConfig, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT expects a GPTConfig, got {type(config).__name__}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.config = config
        d = config.d_model
        self.wte = Embedding(config.vocab_size, d, rng=rng, std=config.init_std)
        self.wpe = Embedding(config.max_seq_len, d, rng=rng, std=config.init_std)
        self.drop = Dropout(config.dropout, rng=child_rng(rng))
        self.h = ModuleList([Block(config, rng) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(d, eps=config.layer_norm_eps)
        self._cache: dict[str, Any] | None = None

    def repeated_blocks(self) -> list[Module]:
        return list(self.h)

    # ---- input checks --------------------------------------------------------------
    def _check_ids(self, input_ids, past_len: int) -> np.ndarray:
        ids = np.asarray(input_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"input_ids must be an integer array, got dtype {ids.dtype}")
        if ids.ndim != 2:
            raise ValueError(
                f"input_ids must be 2-D (batch, seq_len), got shape {ids.shape}; "
                "wrap a single sequence as ids[None, :]"
            )
        if ids.shape[0] < 1 or ids.shape[1] < 1:
            raise ValueError(f"input_ids must hold at least one token, got shape {ids.shape}")
        vocab = self.config.vocab_size
        bad = ids[(ids < 0) | (ids >= vocab)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is out of range for vocab_size {vocab}")
        total = past_len + ids.shape[1]
        if total > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {total} tokens ({past_len} cached + {ids.shape[1]} new) exceeds "
                f"the context length max_seq_len={self.config.max_seq_len}"
            )
        return ids

    def _check_past(self, past_key_values, batch: int) -> int:
        if past_key_values is None:
            return 0
        if len(past_key_values) != self.config.n_layer:
            raise ValueError(
                f"past_key_values must hold one (k, v) pair per layer ({self.config.n_layer}), "
                f"got {len(past_key_values)}"
            )
        expected = (batch, self.config.n_head, None, self.config.head_dim)
        past_len = None
        for k, v in past_key_values:
            if (
                k.ndim != 4
                or k.shape != v.shape
                or k.shape[:2] != (batch, self.config.n_head)
                or (k.shape[3] != self.config.head_dim)
            ):
                raise ValueError(
                    f"past_key_values entries must be (k, v) of shape (B, H, P, dh) = "
                    f"{expected} with P the cached length, got {k.shape} and {v.shape}"
                )
            if past_len is not None and k.shape[2] != past_len:
                raise ValueError("past_key_values layers hold different cached lengths")
            past_len = k.shape[2]
        return 0 if past_len is None else int(past_len)

    # ---- forward / backward ----------------------------------------------------------
    def forward(
        self,
        input_ids: np.ndarray,
        labels: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
    ) -> ModelOutput:
        """Logits (B, T, V) for every position; loss when ``labels`` (B, T) are given.

        loss = mean over t with labels[:, t+1] != -100 of -log softmax(logits[:, t])[labels[:, t+1]]
        (labels are the inputs themselves for language modelling: the shift is done here).
        Positions are P .. P + T - 1 whatever the padding (GPT-2's default ``position_ids``).

        A batch of several rows is split over the cores (``numpyllm.nn.execution``).
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
        self._cache = None
        logits = np.empty((B, T, self.config.vocab_size), dtype=self.wte.weight.data.dtype)
        inputs = {"ids": ids, "targets": targets, "mask": mask, "logits_out": logits}
        return run_forward(
            self,
            inputs,
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
        targets: np.ndarray | None,
        mask: np.ndarray | None,
        past_key_values: KVCache | None = None,
        past_len: int = 0,
        use_cache: bool = False,
        logits_out: np.ndarray | None = None,
    ) -> ModelOutput:
        """The forward on checked inputs: ``targets`` already shifted (see ``forward``),
        ``mask`` boolean (B, 1, 1, P + T) or None. Logits are written to ``logits_out``
        (B, T, V) when given."""
        B, T = ids.shape
        x = self.wte(ids)  # (B, T) -> (B, T, d), a fresh gather
        x += self.wpe.weight.data[past_len : past_len + T]  # + (T, d) positions, broadcast over B
        x = self.drop(x)
        presents: KVCache | None = [] if use_cache else None
        for i, block in enumerate(self.h):
            past_kv = past_key_values[i] if past_key_values is not None else None
            x = block(x, mask, past_kv, use_cache)  # (B, T, d)
            if presents is not None:
                x, present = x
                presents.append(present)
        hidden = self.ln_f(x)  # (B, T, d)
        head = self.wte.weight.data  # (V, d), the tied output head
        if logits_out is None:
            logits_out = np.empty((B, T, head.shape[0]), dtype=hidden.dtype)
        logits = logits_out
        np.matmul(hidden.reshape(B * T, -1), head.T, out=logits.reshape(B * T, -1))  # (B*T, V)

        loss = None
        loss_cache = None
        if targets is not None:
            loss_value, loss_cache = cross_entropy_forward(logits, targets, IGNORE_INDEX)
            loss = float(loss_value)
        self._cache = {
            "hidden": hidden,
            "head": head,
            "loss_cache": loss_cache,
            "past_len": past_len,
            "inference_only": past_key_values is not None,
            "logits_shape": logits.shape,
        }
        return ModelOutput(logits=logits, loss=loss, hidden_states=hidden, past_key_values=presents)

    def _backward(self, dlogits: np.ndarray | None, dloss: float = 1.0) -> None:
        """Accumulate dL/dtheta into every parameter's ``.grad`` for the last forward.

        Starts from ``dloss`` (dL/dloss, 1 by default) on the last call's loss, or from
        ``dlogits`` (B, T, V) if given.
        The tied head contributes to wte twice:
            logits = h E^T     ->  dE += dlogits^T h,   dh = dlogits E
            x_0 = E[ids] + ... ->  dE[ids] += dx_0      (scatter-add)
        and the positions get dwpe[P + t] += sum_b dx_0[b, t].
        """
        cache = self._cache
        if cache is None:
            raise RuntimeError("GPT.backward called without a preceding forward (or twice)")
        if cache["inference_only"]:
            raise RuntimeError(
                "GPT.backward is not available after a forward with past_key_values: "
                "a cached forward is inference only; run the full sequence without a cache"
            )
        hidden, head = cache["hidden"], cache["head"]
        B, T, d = hidden.shape
        if dlogits is None:
            if cache["loss_cache"] is None:
                raise RuntimeError(
                    "GPT.backward needs a loss: call the model with labels=..., or pass dlogits=..."
                )
            dlogits = cross_entropy_backward(dloss, cache["loss_cache"], overwrite=True)  # in place
        else:
            dlogits = np.asarray(dlogits)
            expected = (B, T, head.shape[0])
            if dlogits.shape != expected:
                raise ValueError(f"dlogits must have shape {expected}, got {dlogits.shape}")
        self._cache = None

        past_len = cache["past_len"]
        del cache  # with dlogits below: the (B, T, V) buffers are not kept through the blocks
        dlogits2 = dlogits.reshape(B * T, -1)  # (B*T, V)
        if self.wte.weight.requires_grad:
            self.wte.weight.grad += dlogits2.T @ hidden.reshape(B * T, d)  # (V, B*T) @ (B*T, d)
        dx = (dlogits2 @ head).reshape(B, T, d)  # (B*T, V) @ (V, d) -> (B, T, d)
        del dlogits, dlogits2, hidden
        dx = self.ln_f.backward(dx)
        # below block 0 lie only the embeddings: frozen, they need no dx from it
        trains_below = self.wte.weight.requires_grad or self.wpe.weight.requires_grad
        for i in reversed(range(len(self.h))):
            dx = self.h[i].backward(dx, need_input=i > 0 or trains_below)  # (B, T, d)
        if dx is None:
            self.drop.release()
            return
        dx = self.drop.backward(dx)
        if self.wpe.weight.requires_grad:
            self.wpe.weight.grad[past_len : past_len + T] += dx.sum(axis=0)  # (B, T, d) -> (T, d)
        self.wte.backward(dx)  # scatter-add into wte.grad

    # ---- cost model --------------------------------------------------------------------
    def estimate_flops_per_token(self, seq_len: int | None = None) -> float:
        """Approximate training FLOPs per token (forward + backward), the usual 6N + 12 L T d.

        A matmul with an (m, n) weight costs 2mn FLOPs per token forward and twice that
        backward (input and weight gradients): 6 per weight per token. N counts every
        parameter that takes part in a matmul: all but the position table (wte counts, as the
        tied output head). Attention adds, per layer and per token, q k^T and P v: 2 * 2 T d
        forward, 3x that with the backward, so 12 L T d (with the full T x T score matrix that
        is actually computed, not only its causal half). Elementwise work (LayerNorm, GELU,
        softmax) is not counted. ``seq_len`` defaults to ``max_seq_len``.
        """
        cfg = self.config
        T = cfg.max_seq_len if seq_len is None else seq_len
        n_matmul = self.num_parameters() - self.wpe.weight.size
        return float(6 * n_matmul + 12 * cfg.n_layer * T * cfg.d_model)

    # ---- generation and checkpoints ----------------------------------------------------
    def incremental_decoder(self, batch: int = 1, max_len: int | None = None) -> GPTDecoder:
        """This model's forward for generation, one step at a time, with the keys and values
        cached in buffers allocated once (see ``numpyllm.models.gpt_decoding``)."""
        return GPTDecoder(self, batch, max_len)

    def generate(self, input_ids, **kwargs) -> np.ndarray:
        """Continue ``input_ids`` (B, T) one token at a time with a KV cache; returns (B, T + new).

        Options as in ``numpyllm.generation.generate_decoder_only``: max_new_tokens /
        max_length, do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id, seed,
        crop_context.
        """
        from numpyllm.generation import generate_decoder_only

        return generate_decoder_only(self, input_ids, **kwargs)

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32) -> GPT:
        """Load a transformers GPT-2 folder (config.json + model.safetensors)."""
        from numpyllm.hf import load_gpt2

        return load_gpt2(path, dtype=dtype)

    def save_pretrained(self, path) -> None:
        """Write config.json + model.safetensors that GPT2LMHeadModel.from_pretrained loads."""
        from numpyllm.hf import save_gpt2

        save_gpt2(self, path)

