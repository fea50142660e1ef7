"""T5: an encoder-decoder transformer with RMS norm and a relative position bias.

The model computes what Hugging Face's ``T5ForConditionalGeneration`` computes:

    e      = E[input_ids]                                  shared embedding E (V, d)
    x      = dropout(e)
    B_enc  = position bias of the encoder (1, H, T, T), bidirectional buckets
    for each encoder block:                                pre-norm, residual
        x  = x + dropout(SelfAttn(RMSNorm(x), bias=B_enc, mask=padding))
        x  = x + dropout(FFN(RMSNorm(x)))
    enc    = dropout(RMSNorm(x))                           (B, T, d)

    y      = dropout(E[decoder_input_ids])
    B_dec  = position bias of the decoder (1, H, S, S), causal buckets
    for each decoder block:
        y  = y + dropout(CausalSelfAttn(RMSNorm(y), bias=B_dec, mask=decoder padding))
        y  = y + dropout(CrossAttn(RMSNorm(y), enc, mask=encoder padding))
        y  = y + dropout(FFN(RMSNorm(y)))
    h      = dropout(RMSNorm(y))                           (B, S, d)
    logits = (h * d**-0.5) E^T      tied (the rescale keeps logits at the embedding's scale)
           = h W_lm                 untied (T5 v1.1), no rescale
    loss   = mean cross-entropy(logits, labels) over labels != -100 (no shift: the labels
             are the targets of each position; the decoder input is the labels shifted right)

Attention has no 1/sqrt(d_kv) scaling (scale = 1): T5 folds it into the
initialisation of W_q. RMSNorm divides by the root mean square without
subtracting the mean and has no bias. FFN is ``relu(x W_i) W_o`` (T5) or the
gated ``gelu_tanh(x W_i0) * (x W_i1)`` then ``W_o`` (T5 v1.1, "gated-gelu"), with a
dropout before W_o.

The position bias (``t5_position_bias.py``) is one learned table per stack,
added to the scores of every self-attention layer of that stack; cross-attention
has none. Its gradient is the sum over the layers of the gradient of the bias,
scattered into the table by bucket.

Backward pass, top to bottom: the cross-entropy gives dlogits = softmax - onehot
(over counted labels, divided by their number); the tied head gives
dh = d**-0.5 dlogits E and dE += d**-0.5 dlogits^T h; each decoder block sends
a gradient back along its residual stream and, from its cross-attention, one into
the encoder output, so the encoder receives the sum over all decoder blocks;
both stacks finish by scattering their input gradient into the shared embedding.

Differences from the reference, training mode only: T5 also applies dropout to
the attention probabilities; our attention layer has no such dropout, so with
dropout > 0 training differs from it in that one place. With dropout off (or in
eval mode) the computation is the same.

Generation support: ``encode(input_ids, attention_mask)`` returns the encoder
output; ``forward(decoder_input_ids=..., encoder_outputs=enc, attention_mask=...,
past_key_values=past, use_cache=True)`` runs only the decoder and returns
``past_key_values``: per decoder block ``((self_k, self_v), (cross_k, cross_v))``,
each (B, H, T, d_kv). The cross-attention keys and values are projected from the
encoder output once, on the first cached call, and reused. The queries of a
cached call sit at absolute positions Tpast + i for the decoder's position bias.
A call with a cache is inference only: ``backward()`` after it raises.

Input rules: ids are integer arrays of shape (B, T) (1-D input is rejected);
T5 has no maximum length (relative positions only). Masks are (B, T) arrays,
nonzero = a real token.

Parameter names, ours -> Hugging Face. {s} is ``encoder`` or ``decoder``; {n} is the
index of the feed-forward sub-layer in an HF block: 1 in the encoder, 2 in the decoder
(after self-attention 0 and cross-attention 1). "T" marks a weight HF stores
transposed: its Linear weights are (out, in), ours (in, out).

    shared.weight (V, d)
        HF shared.weight (checkpoints may repeat it as {s}.embed_tokens.weight)
    {s}.relative_attention_bias.weight (num_buckets, H)
        HF {s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight
    {s}.blocks.{i}.self_attn.{q,k,v}_proj.weight (d, H*d_kv), o_proj.weight (H*d_kv, d)
        HF {s}.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight                     T
    {s}.blocks.{i}.self_attn_norm.weight (d,)
        HF {s}.block.{i}.layer.0.layer_norm.weight
    decoder.blocks.{i}.cross_attn.{q,k,v,o}_proj.weight
        HF decoder.block.{i}.layer.1.EncDecAttention.{q,k,v,o}.weight               T
    decoder.blocks.{i}.cross_attn_norm.weight
        HF decoder.block.{i}.layer.1.layer_norm.weight
    {s}.blocks.{i}.ffn.fc_in.weight (d, d_ff)
        HF {s}.block.{i}.layer.{n}.DenseReluDense.wi.weight (relu) or .wi_0 (gated)  T
    {s}.blocks.{i}.ffn.fc_gate.weight (d, d_ff), gated only
        HF {s}.block.{i}.layer.{n}.DenseReluDense.wi_1.weight                       T
    {s}.blocks.{i}.ffn.fc_out.weight (d_ff, d)
        HF {s}.block.{i}.layer.{n}.DenseReluDense.wo.weight                         T
    {s}.blocks.{i}.ffn_norm.weight
        HF {s}.block.{i}.layer.{n}.layer_norm.weight
    {s}.final_norm.weight
        HF {s}.final_layer_norm.weight
    lm_head.weight (d, V), only when tie_word_embeddings is False
        HF lm_head.weight (V, d)                                                    T
        (tied: HF's lm_head.weight is shared.weight and we have no lm_head)

Config fields, ours <-> HF ``T5Config``: n_layer = num_layers, n_decoder_layer =
num_decoder_layers, n_head = num_heads, dropout = dropout_rate, layer_norm_eps =
layer_norm_epsilon, feed_forward = feed_forward_proj, init_factor =
initializer_factor; the others share their names. Our ``tie_word_embeddings``
decides both the weight tying and the d**-0.5 rescale, as in the checkpoints'
config.json (recent transformers versions read the rescale from that key as
``scale_decoder_outputs``).

Initialisation follows the reference's ``_init_weights`` with f = init_factor:
E ~ N(0, f^2) and untied W_lm ~ N(0, f^2); W_q ~ N(0, f^2 / (d d_kv)); W_k, W_v ~
N(0, f^2 / d); W_o ~ N(0, f^2 / (H d_kv)); W_i, W_i0, W_i1 ~ N(0, f^2 / d); W_o of
the FFN ~ N(0, f^2 / d_ff); position tables ~ N(0, f^2 / d); norm weights = 1
(the reference uses f; with f = 1 the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from numpyllm.functional.embedding import embedding_backward, embedding_forward
from numpyllm.functional.linear import linear_backward, linear_forward
from numpyllm.functional.losses import cross_entropy_backward, cross_entropy_forward
from numpyllm.models import checks
from numpyllm.models.output import ModelOutput
from numpyllm.models.t5_position_bias import RelativePositionBias, relative_position_bucket
from numpyllm.nn.attention import MultiHeadAttention
from numpyllm.nn.execution import Model, blas_for, run_forward
from numpyllm.nn.feed_forward import FeedForward, activation_pair
from numpyllm.nn.init import child_rng
from numpyllm.nn.linear import Embedding, Linear
from numpyllm.nn.module import Module, ModuleList
from numpyllm.nn.norms import Dropout, RMSNorm

__all__ = ["T5", "T5Config", "relative_position_bucket", "shift_right"]

IGNORE_INDEX = -100


@dataclass
class T5Config:
    """Hyperparameters of T5 (defaults: t5-small). See the module docstring for HF's names."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64  # head dimension; the attention's inner size is n_head * d_kv
    d_ff: int = 2048
    n_layer: int = 6
    n_decoder_layer: int | None = None  # None = n_layer
    n_head: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout: float = 0.1
    layer_norm_eps: float = 1e-6
    feed_forward: str = "relu"  # "relu" (T5) or "gated-gelu" (T5 v1.1); "act" or "gated-act"
    tie_word_embeddings: bool = True
    decoder_start_token_id: int = 0
    pad_token_id: int = 0
    eos_token_id: int = 1
    init_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.n_decoder_layer is None:
            self.n_decoder_layer = self.n_layer
        checks.positive_ints(self, "vocab_size", "d_model", "d_kv", "d_ff", "n_layer",
                             "n_decoder_layer", "n_head", "relative_attention_num_buckets",
                             "relative_attention_max_distance")  # fmt: skip
        if self.relative_attention_num_buckets < 4:
            raise ValueError(
                "T5Config.relative_attention_num_buckets must be at least 4 (the encoder splits "
                f"them into two directions of >= 2), got {self.relative_attention_num_buckets}"
            )
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 2:
            raise ValueError(
                "T5Config.relative_attention_max_distance must exceed "
                f"relative_attention_num_buckets // 2 = {self.relative_attention_num_buckets // 2}"
                f" (the exact buckets), got {self.relative_attention_max_distance}"
            )
        checks.probability(self, "dropout")
        checks.positive_floats(self, "layer_norm_eps", "init_factor")
        self._parse_feed_forward()  # raises on an unknown form or activation
        for name in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
            checks.token_id(self, name)

    @property
    def gated(self) -> bool:
        return self._parse_feed_forward()[1]

    @property
    def activation(self) -> str:
        return self._parse_feed_forward()[0]

    def _parse_feed_forward(self) -> tuple[str, bool]:
        """(activation, gated) as HF reads feed_forward: "gated-gelu" -> ("gelu_new", True)."""
        parts = str(self.feed_forward).split("-")
        gated = len(parts) == 2 and parts[0] == "gated"
        if len(parts) > 2 or (len(parts) == 2 and not gated):
            raise ValueError(
                "T5Config.feed_forward must be 'act' or 'gated-act' (e.g. 'relu', 'gated-gelu'), "
                f"got {self.feed_forward!r}"
            )
        activation = "gelu_new" if self.feed_forward == "gated-gelu" else parts[-1]
        try:
            activation_pair(activation)
        except ValueError as err:
            raise ValueError(f"T5Config.feed_forward={self.feed_forward!r}: {err}") from None
        return activation, gated


def shift_right(labels: np.ndarray, decoder_start_token_id: int, pad_token_id: int) -> np.ndarray:
    """Decoder inputs from labels: [start, y_0, ..., y_{T-2}], with -100 replaced by pad.

    Position t of the decoder then sees labels < t and is trained to predict labels[t].
    """
    labels = np.asarray(labels)
    shifted = np.empty_like(labels)  # (B, T)
    shifted[..., 1:] = labels[..., :-1]
    shifted[..., 0] = decoder_start_token_id
    shifted[shifted == IGNORE_INDEX] = pad_token_id
    return shifted


class T5Block(Module):
    """One pre-norm block: self-attention, cross-attention (decoder only), feed-forward."""

    def __init__(self, config: T5Config, is_decoder: bool, rng: np.random.Generator) -> None:
        super().__init__()
        d, f = config.d_model, config.init_factor
        self.is_decoder = is_decoder
        self.self_attn_norm = RMSNorm(d, config.layer_norm_eps)
        self.self_attn = _attention(config, causal=is_decoder, rng=rng)
        self.self_attn_dropout = Dropout(config.dropout, rng=child_rng(rng))
        if is_decoder:
            self.cross_attn_norm = RMSNorm(d, config.layer_norm_eps)
            self.cross_attn = _attention(config, causal=False, rng=rng)
            self.cross_attn_dropout = Dropout(config.dropout, rng=child_rng(rng))
        self.ffn_norm = RMSNorm(d, config.layer_norm_eps)
        self.ffn = FeedForward(
            d,
            config.d_ff,
            activation=config.activation,
            gated=config.gated,
            bias=False,
            dropout=config.dropout,
            rng=child_rng(rng),
            std_in=f * d**-0.5,
            std_out=f * config.d_ff**-0.5,
        )
        self.ffn_dropout = Dropout(config.dropout, rng=child_rng(rng))

    def forward(
        self,
        x: np.ndarray,
        mask: np.ndarray | None,
        bias: np.ndarray,
        encoder_hidden_states: np.ndarray | None = None,
        encoder_mask: np.ndarray | None = None,
        past: tuple | None = None,
        cached: bool = False,
    ) -> tuple[np.ndarray, tuple | None]:
        """x (B, T, d) -> (B, T, d), and with ``cached`` this block's ((k, v), (cross k, v))."""
        past_self, past_cross = past if past is not None else (None, None)
        h = self.self_attn_norm(x)  # (B, T, d)
        if cached:
            a, present_self = self.self_attn(
                h, mask=mask, bias=bias, past_kv=past_self, use_cache=True
            )  # (B, T, d), keys/values (B, H, Tpast + T, d_kv)
        else:
            a = self.self_attn(h, mask=mask, bias=bias)  # (B, T, d)
        x = x + self.self_attn_dropout(a)  # residual
        present_cross = None
        if self.is_decoder:
            if encoder_hidden_states is None:  # else the cross-attention would attend to x
                raise ValueError("a T5 decoder block needs encoder_hidden_states")
            h = self.cross_attn_norm(x)  # (B, T, d)
            if cached:  # the encoder's keys and values: projected once, then reused
                present_cross = past_cross
                if present_cross is None:
                    present_cross = self.cross_attn.project_kv(encoder_hidden_states)
                a = self.cross_attn(h, mask=encoder_mask, kv=present_cross)  # (B, T, d)
            else:
                a = self.cross_attn(h, x_kv=encoder_hidden_states, mask=encoder_mask)
            x = x + self.cross_attn_dropout(a)  # (B, T, d)
        x = x + self.ffn_dropout(self.ffn(self.ffn_norm(x)))  # (B, T, d) -> (B, T, d)
        return x, ((present_self, present_cross) if cached else None)

    def backward(self, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """dout (B, T, d) -> (dx (B, T, d), dbias (1, H, T, T), d encoder output or None).

        Each residual step x + g(norm(x)) passes dout straight through and adds
        norm'(x)^T g'^T dout on top.
        """
        dx = dout + self.ffn_norm.backward(self.ffn.backward(self.ffn_dropout.backward(dout)))
        dencoder = None
        if self.is_decoder:
            da = self.cross_attn_dropout.backward(dx)  # (B, T, d)
            dh, dencoder, _ = self.cross_attn.backward(da)  # queries' and keys/values' inputs
            dx = dx + self.cross_attn_norm.backward(dh)
        da = self.self_attn_dropout.backward(dx)
        dh, _, dbias = self.self_attn.backward(da)  # self-attention: dh holds q, k and v paths
        dx = dx + self.self_attn_norm.backward(dh)
        return dx, dbias, dencoder


def _attention(config: T5Config, causal: bool, rng: np.random.Generator) -> MultiHeadAttention:
    """T5 attention: no biases, no score scaling, inner size n_head * d_kv, T5's init."""
    d, f, inner = config.d_model, config.init_factor, config.n_head * config.d_kv
    attention = MultiHeadAttention(
        d,
        config.n_head,
        inner_dim=inner,
        bias=False,
        causal=causal,
        scale=1.0,
        rng=rng,
        std=f * d**-0.5,  # W_k, W_v (and W_q, rescaled below)
        out_std=f * inner**-0.5,  # W_o
    )
    # W_q ~ N(0, f^2 / (d d_kv)): the 1/sqrt(d_kv) that other models put on the scores
    attention.q_proj.weight.data *= config.d_kv**-0.5
    return attention


class T5Stack(Module):
    """The encoder or the decoder: embedding dropout, blocks sharing one position bias, final norm.

    Takes the embedded tokens (the embedding table is the model's, shared by both
    stacks) and returns the final hidden states.
    """

    def __init__(self, config: T5Config, is_decoder: bool, rng: np.random.Generator) -> None:
        super().__init__()
        assert config.n_decoder_layer is not None, "T5Config.__post_init__ sets it"
        n_blocks = config.n_decoder_layer if is_decoder else config.n_layer
        self.is_decoder = is_decoder
        self.embed_dropout = Dropout(config.dropout, rng=child_rng(rng))
        self.relative_attention_bias = RelativePositionBias(
            config.relative_attention_num_buckets,
            config.relative_attention_max_distance,
            config.n_head,
            bidirectional=not is_decoder,
            rng=rng,
            std=config.init_factor * config.d_model**-0.5,
        )
        self.blocks = ModuleList([T5Block(config, is_decoder, rng) for _ in range(n_blocks)])
        self.final_norm = RMSNorm(config.d_model, config.layer_norm_eps)
        self.final_dropout = Dropout(config.dropout, rng=child_rng(rng))

    def forward(
        self,
        x: np.ndarray,
        mask: np.ndarray | None = None,
        encoder_hidden_states: np.ndarray | None = None,
        encoder_mask: np.ndarray | None = None,
        past_key_values: tuple | None = None,
        cached: bool = False,
    ) -> tuple[np.ndarray, tuple | None]:
        """x (B, T, d) embeddings -> (B, T, d); masks boolean (B, Tk), True = real token.

        With a cache, ``mask`` covers the Tpast + T keys of the self-attention.
        """
        t = x.shape[1]
        past_length = 0 if past_key_values is None else past_key_values[0][0][0].shape[2]
        bias = self.relative_attention_bias(t, past_length + t, offset=past_length)  # (1,H,T,Tk)
        self_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, Tk)
        cross_mask = None if encoder_mask is None else encoder_mask[:, None, None, :]
        h = self.embed_dropout(x)  # (B, T, d)
        presents = []
        for i, block in enumerate(self.blocks):
            past = None if past_key_values is None else past_key_values[i]
            h, present = block(h, self_mask, bias, encoder_hidden_states, cross_mask, past, cached)
            presents.append(present)
        h = self.final_dropout(self.final_norm(h))  # (B, T, d)
        return h, (tuple(presents) if cached else None)

    def backward(self, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """dout (B, T, d) -> (d embeddings (B, T, d), d encoder output summed over blocks, or None).

        Every block added the same bias, so the table's gradient is taken once, from
        the sum of the blocks' bias gradients.
        """
        dh = self.final_norm.backward(self.final_dropout.backward(dout))  # (B, T, d)
        dbias_sum = None
        dencoder_sum = None
        for block in reversed(self.blocks):
            dh, dbias, dencoder = block.backward(dh)
            dbias_sum = dbias if dbias_sum is None else dbias_sum + dbias  # (1, H, T, T)
            if dencoder is not None:
                dencoder_sum = dencoder if dencoder_sum is None else dencoder_sum + dencoder
        if dbias_sum is not None:  # None only for a stack of no blocks
            self.relative_attention_bias.backward(dbias_sum)
        return self.embed_dropout.backward(dh), dencoder_sum


class T5(Model):
    """T5 for conditional generation: encoder, decoder, shared embedding, language-model head."""

    config: T5Config

    def __init__(self, config: T5Config, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(config, T5Config):
            raise TypeError(f"T5 expects a T5Config, got {type(config).__name__}")
        rng = rng if rng is not None else np.random.default_rng(0)
        f = config.init_factor
        self.config = config
        self.shared = Embedding(config.vocab_size, config.d_model, rng=rng, std=f * 1.0)
        self.encoder = T5Stack(config, is_decoder=False, rng=rng)
        self.decoder = T5Stack(config, is_decoder=True, rng=rng)
        if config.tie_word_embeddings:
            self.lm_head = None  # logits use shared.weight
        else:
            self.lm_head = Linear(config.d_model, config.vocab_size, bias=False, rng=rng, std=f)
        self._state: dict | None = None

    def repeated_blocks(self) -> list[Module]:
        return [*self.encoder.blocks, *self.decoder.blocks]

    # ---- input checks ----------------------------------------------------------------
    def _check_ids(self, name: str, ids) -> np.ndarray:
        return checks.token_ids(ids, self.config.vocab_size, name)

    def _check_labels(self, labels) -> np.ndarray:
        return checks.token_ids(labels, self.config.vocab_size, "labels", labels=True)

    @staticmethod
    def _check_mask(name: str, mask, shape: tuple[int, int]) -> np.ndarray | None:
        """(B, Tk) with nonzero = real token -> boolean; None when there is nothing to mask."""
        if mask is None:
            return None
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (batch, keys), got {mask.shape}")
        keep = mask != 0
        return None if keep.all() else keep  # no padding: spare every layer the masking pass

    def _check_encoder_outputs(self, encoder_outputs) -> np.ndarray:
        enc = encoder_outputs
        if not isinstance(enc, np.ndarray):
            raise TypeError(
                f"encoder_outputs must be the array returned by encode(), got {type(enc).__name__}"
            )
        if enc.ndim != 3 or enc.shape[2] != self.config.d_model:
            raise ValueError(
                f"encoder_outputs must have shape (batch, length, d_model={self.config.d_model}), "
                f"got {enc.shape}"
            )
        if enc.dtype != self.dtype:
            raise TypeError(f"encoder_outputs has dtype {enc.dtype}, the model {self.dtype}")
        return enc

    def _check_past(self, past_key_values, batch: int) -> tuple | None:
        if past_key_values is None:
            return None
        n = self.config.n_decoder_layer
        if len(past_key_values) != n:
            raise ValueError(
                f"past_key_values must hold one entry per decoder block ({n}), "
                f"got {len(past_key_values)}"
            )
        k = past_key_values[0][0][0]
        if k.ndim != 4 or k.shape[0] != batch:
            raise ValueError(
                f"past_key_values keys must have shape ({batch}, n_head, past, d_kv), got {k.shape}"
            )
        return tuple(past_key_values)

    # ---- forward -----------------------------------------------------------------------
    def _embed(self, ids: np.ndarray) -> tuple[np.ndarray, tuple]:
        return embedding_forward(ids, self.shared.weight.data)  # (B, T) -> (B, T, d)

    def encode(self, input_ids, attention_mask=None) -> np.ndarray:
        """The encoder's output (B, T, d) for input_ids (B, T); attention_mask (B, T), 1 = token.

        A ``backward()`` afterwards needs a new ``forward`` (this call replaces the
        encoder's saved activations).
        """
        ids = self._check_ids("input_ids", input_ids)
        mask = self._check_mask("attention_mask", attention_mask, ids.shape)
        self._state = None
        with blas_for(self, ids.size):
            emb, _ = self._embed(ids)  # (B, T, d)
            enc, _ = self.encoder(emb, mask=mask)
        return enc

    def forward(
        self,
        input_ids=None,
        labels=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs: np.ndarray | None = None,
        past_key_values: tuple | None = None,
        use_cache: bool = False,
    ) -> ModelOutput:
        """Logits (B, S, V) for the decoder inputs, and the loss when labels are given.

        ``decoder_input_ids`` default to ``shift_right(labels)``. ``encoder_outputs``
        (from ``encode``) skips the encoder; ``attention_mask`` is then still the
        encoder's padding mask, used by the cross-attention. ``decoder_attention_mask``
        (B, Tpast + S) masks decoder padding. ``past_key_values`` / ``use_cache``: see
        the module docstring (inference only).
        """
        cfg = self.config
        self._state = None
        ids = enc = None
        if encoder_outputs is None:
            if input_ids is None:
                raise ValueError("T5 needs input_ids, or encoder_outputs from encode()")
            ids = self._check_ids("input_ids", input_ids)
            enc_mask = self._check_mask("attention_mask", attention_mask, ids.shape)
            batch = ids.shape[0]
        else:
            enc = self._check_encoder_outputs(encoder_outputs)
            enc_mask = self._check_mask("attention_mask", attention_mask, enc.shape[:2])
            batch = enc.shape[0]

        if labels is not None:
            labels = self._check_labels(labels)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("T5 needs decoder_input_ids or labels (shifted right)")
            decoder_input_ids = shift_right(labels, cfg.decoder_start_token_id, cfg.pad_token_id)
        dec_ids = self._check_ids("decoder_input_ids", decoder_input_ids)
        if dec_ids.shape[0] != batch:
            raise ValueError(
                f"decoder_input_ids has batch size {dec_ids.shape[0]}, the encoder input {batch}"
            )
        if labels is not None and labels.shape != dec_ids.shape:
            raise ValueError(
                f"labels must match decoder_input_ids' shape {dec_ids.shape}, got {labels.shape}"
            )
        past = self._check_past(past_key_values, batch)
        cached = use_cache or past is not None
        past_length = 0 if past is None else past[0][0][0].shape[2]
        dec_mask = self._check_mask(
            "decoder_attention_mask",
            decoder_attention_mask,
            (batch, past_length + dec_ids.shape[1]),
        )
        # the pass's size: its longer stack's (each op sees one stack's rows)
        source = ids if enc is None else enc
        encoder_length = 0 if source is None else source.shape[1]
        tokens = batch * max(dec_ids.shape[1], encoder_length)
        inputs = {"ids": ids, "enc": enc, "enc_mask": enc_mask, "dec_ids": dec_ids,
                  "dec_mask": dec_mask, "labels": labels}  # fmt: skip
        scored = None if labels is None else labels != IGNORE_INDEX  # the loss's tokens
        return run_forward(self, inputs, batch=batch, tokens=tokens, scored=scored,
                           cached=cached, past=past, use_cache=use_cache)  # fmt: skip

    def _forward(
        self,
        ids: np.ndarray | None,
        enc: np.ndarray | None,
        enc_mask: np.ndarray | None,
        dec_ids: np.ndarray,
        dec_mask: np.ndarray | None,
        labels: np.ndarray | None,
        past: tuple | None = None,
        use_cache: bool = False,
    ) -> ModelOutput:
        """The forward on checked inputs (see ``forward``): the encoder runs on ``ids``
        unless its output ``enc`` is given."""
        cfg = self.config
        cached = use_cache or past is not None
        enc_emb_cache = None
        if enc is None:
            if ids is None:
                raise ValueError("T5 needs input_ids, or encoder_outputs from encode()")
            enc_emb, enc_emb_cache = self._embed(ids)  # (B, T, d)
            enc, _ = self.encoder(enc_emb, mask=enc_mask)  # (B, T, d)

        dec_emb, dec_emb_cache = self._embed(dec_ids)  # (B, S, d)
        h, presents = self.decoder(
            dec_emb,
            mask=dec_mask,
            encoder_hidden_states=enc,
            encoder_mask=enc_mask,
            past_key_values=past,
            cached=cached,
        )  # (B, S, d)
        if self.lm_head is None:
            scaled = h * cfg.d_model**-0.5  # (B, S, d): keeps float32 (python float)
            logits, head_cache = linear_forward(scaled, self.shared.weight.data.T)  # (B, S, V)
        else:
            logits, head_cache = self.lm_head(h), None  # (B, S, d) -> (B, S, V)

        loss, loss_cache = None, None
        if labels is not None:
            loss_value, loss_cache = cross_entropy_forward(logits, labels, IGNORE_INDEX)
            loss = float(loss_value)
        self._state = {
            "cached": cached,
            "logits_shape": logits.shape,
            "enc_emb_cache": enc_emb_cache,
            "dec_emb_cache": dec_emb_cache,
            "head_cache": head_cache,
            "loss_cache": loss_cache,
        }
        return ModelOutput(
            logits=logits,
            loss=loss,
            hidden_states=h,
            encoder_hidden_states=enc,
            past_key_values=presents if use_cache else None,
        )

    # ---- backward ----------------------------------------------------------------------
    def _backward(self, dlogits: np.ndarray | None, dloss: float = 1.0) -> None:
        """Fill every parameter's ``.grad`` (+=) from dloss (1 by default) times the last
        forward's loss, or from a given ``dlogits`` (B, S, V).

        When the last forward was given ``encoder_outputs``, the gradient stops at the
        encoder output (the encoder did not run in that call).
        """
        state = self._state
        if state is None:
            raise RuntimeError("T5.backward needs a forward call first (one backward per forward)")
        if state["cached"]:
            raise RuntimeError(
                "T5.backward: the last forward used past_key_values / use_cache, which is "
                "inference only; call forward without them to train"
            )
        if dlogits is None:
            if state["loss_cache"] is None:
                raise RuntimeError(
                    "T5.backward: the last forward had no labels, so there is no loss; "
                    "pass labels or give dlogits"
                )
            dlogits = cross_entropy_backward(dloss, state["loss_cache"])  # (B, S, V)
        elif dlogits.shape != state["logits_shape"]:
            raise ValueError(
                f"dlogits must have the logits' shape {state['logits_shape']}, got {dlogits.shape}"
            )
        self._state = None
        shared = self.shared.weight
        if self.lm_head is None:
            dscaled, dshared_t, _ = linear_backward(
                dlogits, state["head_cache"], need_weight=shared.requires_grad
            )  # (B, S, d), (d, V)
            if dshared_t is not None:
                shared.grad += dshared_t.T
            dh = dscaled * self.config.d_model**-0.5  # (B, S, d)
        else:
            dh = self.lm_head.backward(dlogits)  # (B, S, V) -> (B, S, d)
        ddec_emb, denc = self.decoder.backward(dh)
        if shared.requires_grad:
            shared.grad += embedding_backward(ddec_emb, state["dec_emb_cache"])
        if state["enc_emb_cache"] is not None and denc is not None:  # the encoder ran
            denc_emb, _ = self.encoder.backward(denc)  # (B, T, d)
            if shared.requires_grad:
                shared.grad += embedding_backward(denc_emb, state["enc_emb_cache"])

    # ---- generation and checkpoints ----------------------------------------------------
    def generate(self, input_ids, attention_mask=None, **kwargs) -> np.ndarray:
        """Encode ``input_ids`` once, then decode with a KV cache from the start token.

        Returns (B, 1 + new) decoder ids beginning with ``decoder_start_token_id``.
        Options as in ``numpyllm.generation.generate_encoder_decoder``: max_new_tokens /
        max_length, do_sample, temperature, top_k, top_p, eos_token_id, seed.
        """
        from numpyllm.generation import generate_encoder_decoder

        return generate_encoder_decoder(self, input_ids, attention_mask=attention_mask, **kwargs)

    @classmethod
    def from_pretrained(cls, path, dtype=np.float32) -> T5:
        """Load a transformers T5ForConditionalGeneration folder (config.json + safetensors)."""
        from numpyllm.hf import load_t5

        return load_t5(path, dtype=dtype)

    def save_pretrained(self, path) -> None:
        """Write config.json + model.safetensors that transformers loads."""
        from numpyllm.hf import save_t5

        save_t5(self, path)
