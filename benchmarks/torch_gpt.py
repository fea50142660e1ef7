"""A compact GPT-2 in PyTorch for the benchmarks, loading a numpyllm GPT's weights.

Same maths as ``numpyllm.models.gpt``: learned positions, pre-LayerNorm, tanh GELU, tied
head, no dropout. Two attention variants: ``"explicit"`` (softmax(q k^T / sqrt(dh)) v written
out) and ``"sdpa"`` (``F.scaled_dot_product_attention``). Linear weights are stored (out, in)
as torch's own ``nn.Linear`` does, so the torch side runs its usual fast path. With
``recompute=True`` a training forward keeps only each block's input and runs the block again
in the backward (``torch.utils.checkpoint``), as numpyllm's ``recompute_activations`` does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class _Block(nn.Module):
    def __init__(self, d: int, n_head: int, d_ff: int, eps: float, attention: str) -> None:
        super().__init__()
        self.n_head, self.attention = n_head, attention
        self.ln_1 = nn.LayerNorm(d, eps=eps)
        self.c_attn = nn.Linear(d, 3 * d)
        self.attn_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=eps)
        self.c_fc = nn.Linear(d, d_ff)
        self.mlp_proj = nn.Linear(d_ff, d)

    def _attend(self, q, k, v):
        """q (B, H, T, dh), k/v (B, H, P + T, dh): causal, queries aligned to the keys' end."""
        tq, tk = q.shape[-2], k.shape[-2]
        if self.attention == "sdpa":
            if tq == tk:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            if tq == 1:  # one new token sees every cached key
                return F.scaled_dot_product_attention(q, k, v)
        scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, Tq, Tk)
        blocked = torch.ones(tq, tk, dtype=torch.bool).triu(tk - tq + 1)
        scores = scores.masked_fill(blocked, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    def forward(self, x, past=None):
        B, T, d = x.shape
        H = self.n_head
        qkv = self.c_attn(self.ln_1(x)).view(B, T, 3, H, d // H).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, T, dh)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        y = self._attend(q, k, v).transpose(1, 2).reshape(B, T, d)
        x = x + self.attn_proj(y)
        x = x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x, (k, v)


class TorchGPT(nn.Module):
    """GPT-2 with the numpyllm GPT's config; ``attention`` is ``"explicit"`` or ``"sdpa"``;
    ``recompute``: activation checkpointing of every block in a training forward."""

    def __init__(self, config, attention: str = "sdpa", recompute: bool = False) -> None:
        super().__init__()
        if attention not in ("explicit", "sdpa"):
            raise ValueError(f"attention must be 'explicit' or 'sdpa', got {attention!r}")
        self.recompute = recompute
        d = config.d_model
        self.wte = nn.Embedding(config.vocab_size, d)
        self.wpe = nn.Embedding(config.max_seq_len, d)
        self.h = nn.ModuleList(
            _Block(d, config.n_head, config.d_ff, config.layer_norm_eps, attention)
            for _ in range(config.n_layer)
        )
        self.ln_f = nn.LayerNorm(d, eps=config.layer_norm_eps)

    def forward(self, ids, labels=None, past=None):
        """Logits (B, T, V), loss (mean next-token cross-entropy, as numpyllm's) and the cache."""
        P = 0 if past is None else past[0][0].shape[2]
        T = ids.shape[1]
        x = self.wte(ids) + self.wpe.weight[P : P + T]
        presents = []
        for i, block in enumerate(self.h):
            if self.recompute and past is None and torch.is_grad_enabled():
                x = checkpoint(lambda x, block=block: block(x)[0], x, use_reentrant=False)
                continue  # no key-value cache from a training forward
            x, kv = block(x, None if past is None else past[i])
            presents.append(kv)
        logits = self.ln_f(x) @ self.wte.weight.T  # tied head
        loss = None
        if labels is not None:
            V = logits.shape[-1]
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1))
        return logits, loss, presents

    @torch.no_grad()
    def load_numpyllm(self, model) -> None:
        """Copy every weight of a numpyllm GPT (projections transposed to torch's (out, in))."""
        params = dict(model.named_parameters())

        def put(dst: torch.Tensor, name: str, transpose: bool = False) -> None:
            src = params[name].data.T if transpose else params[name].data
            dst.copy_(torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32)))

        put(self.wte.weight, "wte.weight")
        put(self.wpe.weight, "wpe.weight")
        put(self.ln_f.weight, "ln_f.weight")
        put(self.ln_f.bias, "ln_f.bias")
        pairs = (
            ("ln_1", "ln_1", False),
            ("c_attn", "attn.c_attn", True),
            ("attn_proj", "attn.c_proj", True),
            ("ln_2", "ln_2", False),
            ("c_fc", "mlp.c_fc", True),
            ("mlp_proj", "mlp.c_proj", True),
        )
        for i, block in enumerate(self.h):
            for ours, theirs, transpose in pairs:
                layer = getattr(block, ours)
                put(layer.weight, f"h.{i}.{theirs}.weight", transpose)
                put(layer.bias, f"h.{i}.{theirs}.bias")

    @torch.no_grad()
    def generate_greedy(self, ids, max_new_tokens: int):
        """Greedy decoding with a KV cache; ids (B, T) -> (B, T + max_new_tokens)."""
        logits, _, past = self(ids)
        out = [ids]
        for step in range(max_new_tokens):
            token = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
            out.append(token)
            if step + 1 < max_new_tokens:  # no forward for a token nobody will extend
                logits, _, past = self(token, past=past)
        return torch.cat(out, dim=1)
