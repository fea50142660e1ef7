"""BERT: a bidirectional transformer encoder with a masked-LM head and a classification head,
computed as Hugging Face's BertForMaskedLM and BertForSequenceClassification compute it.

    x_0    = LN_emb(E_word[ids] + E_pos[t] + E_type[token_type_ids]), then dropout
    h_l    = LN_attn(x_{l-1} + drop(Attn(x_{l-1})))        post-LayerNorm blocks, l = 1 .. L
    x_l    = LN_ffn(h_l + drop(FFN(h_l)))                  FFN(u) = act(u W_in + b_in) W_out + b_out
    pooled = tanh(x_L[:, 0] W_pool + b_pool)               from the first ([CLS]) token

    head "mlm":             logits = LN_mlm(act(x_L W_t + b_t)) E_word^T + b_mlm     (B, T, V)
    head "classification":  logits = drop(pooled) W_cls + b_cls                      (B, C)

Attention is bidirectional; ``attention_mask`` (B, T), 1 = real token and 0 = padding, stops every
query from attending to padded keys (boolean mask (B, 1, 1, T)). Positions are 0 .. T - 1 whatever
the padding, and ``token_type_ids`` default to 0, as in Hugging Face.

Losses (Python floats, as Hugging Face computes them):
  * mlm: mean cross-entropy over the positions whose label is not -100 (labels (B, T), no shift);
  * classification with num_labels >= 2 and integer labels (B,): mean cross-entropy;
    with num_labels == 1 (regression) and labels (B,): mean squared error;
    with float labels (B, num_labels) (multi-label): mean binary cross-entropy with logits.

Shapes: B batch, T tokens, d = d_model, H heads, V vocabulary, C = num_labels. ``input_ids`` must
be a 2-D integer array (B, T); a 1-D array is refused with a ValueError.

Parameter names, ours <-> Hugging Face's (BertForMaskedLM prefixes the encoder with ``bert.`` and
has ``cls.predictions``; BertForSequenceClassification has ``bert.`` and ``classifier``). Every
Linear weight here is stored (in, out), the transpose of torch's nn.Linear (out, in)::

    embeddings.word_embeddings.weight        bert.embeddings.word_embeddings.weight   (V, d)
    embeddings.position_embeddings.weight    bert.embeddings.position_embeddings.weight
    embeddings.token_type_embeddings.weight  bert.embeddings.token_type_embeddings.weight
    embeddings.layer_norm.{weight,bias}      bert.embeddings.LayerNorm.{weight,bias}
    encoder.{i}.attention.q_proj.{w,b}       bert.encoder.layer.{i}.attention.self.query.{w,b}
    encoder.{i}.attention.k_proj.{w,b}       bert.encoder.layer.{i}.attention.self.key.{w,b}
    encoder.{i}.attention.v_proj.{w,b}       bert.encoder.layer.{i}.attention.self.value.{w,b}
    encoder.{i}.attention.o_proj.{w,b}       bert.encoder.layer.{i}.attention.output.dense.{w,b}
    encoder.{i}.attention_norm.{w,b}         bert.encoder.layer.{i}.attention.output.LayerNorm.{w,b}
    encoder.{i}.ffn.fc_in.{w,b}              bert.encoder.layer.{i}.intermediate.dense.{w,b}
    encoder.{i}.ffn.fc_out.{w,b}             bert.encoder.layer.{i}.output.dense.{w,b}
    encoder.{i}.ffn_norm.{w,b}               bert.encoder.layer.{i}.output.LayerNorm.{w,b}
    pooler.{weight,bias}                     bert.pooler.dense.{weight,bias}
    mlm_transform.{weight,bias}              cls.predictions.transform.dense.{weight,bias}
    mlm_norm.{weight,bias}                   cls.predictions.transform.LayerNorm.{weight,bias}
    mlm_bias                                 cls.predictions.bias (= cls.predictions.decoder.bias)
    (tied: embeddings.word_embeddings.weight) cls.predictions.decoder.weight
    classifier.{weight,bias}                 classifier.{weight,bias}

({w,b} = {weight,bias}.) ``named_parameters`` lists ``mlm_bias`` first: it is the model's own
parameter, and a module's own parameters come before its children's.

Hugging Face conventions followed to the letter, because its gradients are the reference:
  * the word embedding of ``pad_token_id`` receives no gradient from the lookup (torch's
    ``padding_idx``); it still receives the tied decoder's gradient. Its row starts at zero.
  * initialisation: normal(0, init_std) weights, zero biases, LayerNorm weight 1 and bias 0,
    no scaling of residual projections.
Differences: there is no dropout on the attention probabilities (Hugging Face's
``attention_probs_dropout_prob``), so training-mode outputs differ in their randomness only;
eval mode is exact. An example whose attention_mask is all zeros gets zero attention outputs
here and uniform attention in Hugging Face (both meaningless).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from numpyllm.functional.activations import tanh_backward, tanh_forward
from numpyllm.functional.linear import linear_backward, linear_forward
from numpyllm.functional.losses import (
    bce_with_logits_backward,
    bce_with_logits_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    mse_backward,
    mse_forward,
)
from numpyllm.models import checks
from numpyllm.models.output import ModelOutput
from numpyllm.nn import init
from numpyllm.nn.attention import MultiHeadAttention
from numpyllm.nn.execution import Model, run_forward
from numpyllm.nn.feed_forward import ACTIVATIONS, FeedForward, activation_pair
from numpyllm.nn.init import child_rng
from numpyllm.nn.linear import Embedding, Linear
from numpyllm.nn.module import Module, ModuleList, forward_cache
from numpyllm.nn.norms import Dropout, LayerNorm

IGNORE_INDEX = -100
HEADS = ("mlm", "classification")


@dataclass
class BertConfig:
    """BERT hyper-parameters (Hugging Face names in brackets).

    vocab_size       V, number of token ids                          [vocab_size]
    n_layer          number of encoder blocks                        [num_hidden_layers]
    n_head           attention heads per block                       [num_attention_heads]
    d_model          width of the hidden states                      [hidden_size]
    max_seq_len      number of learned positions                     [max_position_embeddings]
    d_ff             FFN hidden width, default 4 * d_model           [intermediate_size]
    type_vocab_size  number of token types (segments)                [type_vocab_size]
    dropout          embeddings, residual branches, classifier input [hidden_dropout_prob]
    layer_norm_eps                                                   [layer_norm_eps]
    activation       "gelu" (erf, BERT's), "gelu_new" (tanh), "relu" [hidden_act]
    init_std         std of the normal initialisation                [initializer_range]
    num_labels       classes of the classification head (1 = regression)  [num_labels]
    pad_token_id     id whose embedding gets no lookup gradient, or None  [pad_token_id]
    """

    vocab_size: int
    n_layer: int
    n_head: int
    d_model: int
    max_seq_len: int
    d_ff: int | None = None
    type_vocab_size: int = 2
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"
    init_std: float = 0.02
    num_labels: int = 2
    pad_token_id: int | None = 0

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        checks.positive_ints(self, "vocab_size", "n_layer", "n_head", "d_model", "d_ff",
                             "max_seq_len", "type_vocab_size", "num_labels")  # fmt: skip
        checks.divisible(self, "d_model", by="n_head")
        checks.probability(self, "dropout")
        checks.positive_floats(self, "layer_norm_eps", "init_std")
        checks.token_id(self, "pad_token_id", optional=True)
        checks.one_of(self, "activation", ACTIVATIONS)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head



class BertEmbeddings(Module):
    """x = LN(E_word[ids] + E_pos[0 .. T-1] + E_type[token_type_ids]), then dropout.

    Backward: the three tables are summed, so each receives the same gradient g = dx of the sum:
    word and type rows by scatter-add over the ids, positions by a sum over the batch.
    """

    def __init__(self, config: BertConfig, rng: np.random.Generator, dtype=np.float32) -> None:
        super().__init__()
        d, std = config.d_model, config.init_std
        self.pad_token_id = config.pad_token_id
        self.word_embeddings = Embedding(config.vocab_size, d, rng=rng, std=std, dtype=dtype)
        self.position_embeddings = Embedding(config.max_seq_len, d, rng=rng, std=std, dtype=dtype)
        self.token_type_embeddings = Embedding(
            config.type_vocab_size, d, rng=rng, std=std, dtype=dtype
        )
        if self.pad_token_id is not None:
            self.word_embeddings.weight.data[self.pad_token_id] = 0  # torch's padding_idx init
        self.layer_norm = LayerNorm(d, eps=config.layer_norm_eps, dtype=dtype)
        self.dropout = Dropout(config.dropout, rng=child_rng(rng))
        self._cache: tuple[np.ndarray, bool] | None = None  # (ids, every token of type 0)

    def forward(self, ids: np.ndarray, token_type_ids: np.ndarray | None) -> np.ndarray:
        """ids (B, T), token_type_ids (B, T) or None (all type 0) -> (B, T, d)."""
        T = ids.shape[1]
        x = self.word_embeddings(ids)  # (B, T) -> (B, T, d), a fresh gather
        x += self.position_embeddings.weight.data[:T]  # + (T, d), broadcast over B
        if token_type_ids is None:
            x += self.token_type_embeddings.weight.data[0]  # + (d,): every token is type 0
        else:
            x += self.token_type_embeddings(token_type_ids)  # + (B, T, d)
        self._cache = (ids, token_type_ids is None)
        return self.dropout(self.layer_norm(x))  # (B, T, d)

    def backward(self, dout: np.ndarray) -> None:
        ids, all_type_zero = forward_cache(self._cache, self)
        self._cache = None
        g = self.layer_norm.backward(self.dropout.backward(dout))  # (B, T, d), grad of the sum
        T = ids.shape[1]
        if self.position_embeddings.weight.requires_grad:
            self.position_embeddings.weight.grad[:T] += g.sum(axis=0)  # (B, T, d) -> (T, d)
        if all_type_zero:
            if self.token_type_embeddings.weight.requires_grad:
                self.token_type_embeddings.weight.grad[0] += g.sum(axis=(0, 1))  # -> (d,)
        else:
            self.token_type_embeddings.backward(g)  # scatter-add into the type rows
        if self.pad_token_id is not None:
            is_pad = ids == self.pad_token_id  # (B, T)
            if is_pad.any():
                # torch's padding_idx: the lookup sends nothing to the pad row
                g = np.where(is_pad[..., None], np.zeros((), dtype=g.dtype), g)  # (B, T, d)
        self.word_embeddings.backward(g)  # scatter-add into the word rows


class BertLayer(Module):
    """Post-LayerNorm encoder block:

        h   = LN_attn(x + drop(Attn(x)))
        out = LN_ffn(h + drop(FFN(h)))

    Backward, with s_1 = x + drop(Attn(x)) and s_2 = h + drop(FFN(h)):
        ds_2 = LN_ffn'(dout),   dh = ds_2 + FFN'(drop'(ds_2)),
        ds_1 = LN_attn'(dh),    dx = ds_1 + Attn'(drop'(ds_1)).
    """

    def __init__(self, config: BertConfig, rng: np.random.Generator, dtype=np.float32) -> None:
        super().__init__()
        d, std, eps = config.d_model, config.init_std, config.layer_norm_eps
        self.attention = MultiHeadAttention(
            d, config.n_head, bias=True, rng=rng, std=std, dtype=dtype
        )
        self.drop_attn = Dropout(config.dropout, rng=child_rng(rng))
        self.attention_norm = LayerNorm(d, eps=eps, dtype=dtype)
        assert config.d_ff is not None, "BertConfig.__post_init__ sets d_ff"
        self.ffn = FeedForward(
            d,
            config.d_ff,
            activation=config.activation,
            dropout=0.0,
            rng=rng,
            std_in=std,
            std_out=std,
            dtype=dtype,
        )
        self.drop_ffn = Dropout(config.dropout, rng=child_rng(rng))
        self.ffn_norm = LayerNorm(d, eps=eps, dtype=dtype)

    def forward(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """x (B, T, d), mask boolean (B, 1, 1, T) or None -> (B, T, d)."""
        attended = self.drop_attn(self.attention(x, mask=mask))  # (B, T, d)
        h = self.attention_norm(x + attended)  # (B, T, d)
        return self.ffn_norm(h + self.drop_ffn(self.ffn(h)))  # (B, T, d)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        ds2 = self.ffn_norm.backward(dout)  # (B, T, d)
        dh = ds2 + self.ffn.backward(self.drop_ffn.backward(ds2))  # residual + FFN branch
        ds1 = self.attention_norm.backward(dh)  # (B, T, d)
        dx_attn, _, _ = self.attention.backward(self.drop_attn.backward(ds1))  # (B, T, d)
        return ds1 + dx_attn  # residual + attention branch


class BERT(Model):
    """BERT encoder with a masked-LM head and a sequence-classification head (see the module
    docstring for the maths and the parameter names). ``forward(..., head="mlm")`` or
    ``head="classification"`` chooses the head; the other head's parameters get no gradient."""

    config: BertConfig

    def __init__(self, config: BertConfig, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"BERT expects a BertConfig, got {type(config).__name__}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.config = config
        d, std = config.d_model, config.init_std
        self.embeddings = BertEmbeddings(config, rng)
        self.encoder = ModuleList([BertLayer(config, rng) for _ in range(config.n_layer)])
        self.pooler = Linear(d, d, rng=rng, std=std)
        self.mlm_transform = Linear(d, d, rng=rng, std=std)
        self.mlm_act_forward, self.mlm_act_backward = activation_pair(config.activation)
        self.mlm_norm = LayerNorm(d, eps=config.layer_norm_eps)
        self.mlm_bias = init.zeros((config.vocab_size,), np.float32)
        self.classifier_dropout = Dropout(config.dropout, rng=child_rng(rng))
        self.classifier = Linear(d, config.num_labels, rng=rng, std=std)
        self._cache: dict[str, Any] | None = None

    def repeated_blocks(self) -> list[Module]:
        return list(self.encoder)

    # ---- input checks --------------------------------------------------------------
    def _check_ids(self, input_ids) -> np.ndarray:
        ids = checks.token_ids(input_ids, self.config.vocab_size)
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {ids.shape[1]} tokens exceeds the context length "
                f"max_seq_len={self.config.max_seq_len}"
            )
        return ids

    def _check_token_types(self, token_type_ids, shape: tuple[int, int]) -> np.ndarray | None:
        if token_type_ids is None:
            return None
        types = np.asarray(token_type_ids)
        if not np.issubdtype(types.dtype, np.integer):
            raise TypeError(f"token_type_ids must be an integer array, got dtype {types.dtype}")
        if types.shape != shape:
            raise ValueError(
                f"token_type_ids must have the shape of input_ids {shape}, got {types.shape}"
            )
        n_types = self.config.type_vocab_size
        bad = types[(types < 0) | (types >= n_types)]
        if bad.size:
            raise ValueError(
                f"token type {int(bad[0])} is out of range for type_vocab_size {n_types}"
            )
        return types

    @staticmethod
    def _key_mask(attention_mask, shape: tuple[int, int]) -> np.ndarray | None:
        """attention_mask (B, T), 1 = real token, 0 = padding -> boolean (B, 1, 1, T), or None
        when nothing is padded (so attention skips the mask entirely)."""
        if attention_mask is None:
            return None
        keep = np.asarray(attention_mask)
        if keep.shape != shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {shape}, got {keep.shape}"
            )
        if keep.dtype != np.bool_:
            if not np.all((keep == 0) | (keep == 1)):
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
            keep = keep.astype(bool)
        if keep.all():
            return None
        return keep[:, None, None, :]  # (B, T) -> (B, 1, 1, T): same for every head and query

    def _check_mlm_labels(self, labels, shape: tuple[int, int]) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.shape != shape:
            raise ValueError(
                f"mlm labels must have the shape of input_ids {shape}, got {labels.shape}"
            )
        return checks.token_ids(labels, self.config.vocab_size, "mlm labels", labels=True)

    def _classification_loss(self, logits: np.ndarray, labels) -> tuple[float, tuple]:
        """Hugging Face's choice of loss: regression (num_labels == 1), single-label
        (integer labels (B,)) or multi-label (float labels (B, C)). Returns (loss, cache)."""
        labels = np.asarray(labels)
        B, C = logits.shape
        if C == 1:
            if labels.shape not in ((B,), (B, 1)):
                raise ValueError(
                    f"regression labels (num_labels=1) must have shape ({B},), got {labels.shape}"
                )
            target = labels.reshape(B, 1).astype(logits.dtype)
            loss, cache = mse_forward(logits, target)  # mean over B of (logit - target)^2
            return float(loss), ("regression", cache)
        if np.issubdtype(labels.dtype, np.integer):
            if labels.shape != (B,):
                raise ValueError(f"class labels must have shape ({B},), got {labels.shape}")
            bad = labels[(labels < 0) | (labels >= C)]
            if bad.size:
                raise ValueError(f"class label {int(bad[0])} is out of range for num_labels {C}")
            loss, cache = cross_entropy_forward(logits, labels, IGNORE_INDEX)
            return float(loss), ("single", cache)
        if np.issubdtype(labels.dtype, np.floating):
            if labels.shape != (B, C):
                raise ValueError(
                    f"multi-label targets must have shape ({B}, {C}), got {labels.shape}"
                )
            loss, cache = bce_with_logits_forward(logits, labels.astype(logits.dtype))
            return float(loss), ("multi", cache)
        raise TypeError(f"classification labels must be integers or floats, got {labels.dtype}")

    # ---- forward / backward ----------------------------------------------------------
    def forward(
        self,
        input_ids: np.ndarray,
        labels: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
        token_type_ids: np.ndarray | None = None,
        head: str = "mlm",
    ) -> ModelOutput:
        """Run the encoder and one head; ``loss`` when ``labels`` are given.

        head="mlm": logits (B, T, V); labels (B, T) with -100 where no prediction is scored.
        head="classification": logits (B, num_labels); labels (B,) (see the module docstring).
        Always fills ``hidden_states`` (B, T, d), the last block's output, and ``pooler_output``
        (B, d) = tanh(hidden_states[:, 0] W_pool + b_pool).
        """
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        ids = self._check_ids(input_ids)
        B, T = ids.shape
        types = self._check_token_types(token_type_ids, (B, T))
        mask = self._key_mask(attention_mask, (B, T))
        if labels is not None and head == "mlm":
            labels = self._check_mlm_labels(labels, (B, T))
        elif labels is not None:
            labels = np.asarray(labels)
            if labels.shape[:1] != (B,):  # the rest is checked with the logits
                raise ValueError(
                    f"classification labels must have one row per input row: shape ({B},) "
                    f"for class ids or regression, ({B}, num_labels) for multi-label; got "
                    f"{labels.shape}"
                )
        self._cache = None
        # the loss is a mean over scored tokens (mlm), or over rows (classification)
        scored = labels != IGNORE_INDEX if labels is not None and head == "mlm" else None
        inputs = {"ids": ids, "labels": labels, "mask": mask, "types": types}
        return run_forward(self, inputs, batch=B, tokens=B * T, scored=scored, head=head)

    def _forward(
        self,
        ids: np.ndarray,
        labels: np.ndarray | None,
        mask: np.ndarray | None,
        types: np.ndarray | None,
        head: str,
    ) -> ModelOutput:
        """The forward on checked inputs (see ``forward``)."""
        x = self.embeddings(ids, types)  # (B, T) -> (B, T, d)
        for layer in self.encoder:
            x = layer(x, mask=mask)  # (B, T, d)
        hidden = x
        pooled, pool_act_cache = tanh_forward(self.pooler(hidden[:, 0]))  # (B, d) -> (B, d)

        loss, loss_cache = None, None
        head_cache: tuple | np.ndarray
        if head == "mlm":
            t = self.mlm_transform(hidden)  # (B, T, d) -> (B, T, d)
            t, act_cache = self.mlm_act_forward(t)
            t = self.mlm_norm(t)  # (B, T, d)
            decoder = self.embeddings.word_embeddings.weight.data.T  # (d, V) view of the tied table
            logits, decoder_cache = linear_forward(t, decoder, self.mlm_bias.data)  # -> (B, T, V)
            head_cache = (act_cache, decoder_cache)
            if labels is not None:
                loss_value, loss_cache = cross_entropy_forward(logits, labels, IGNORE_INDEX)
                loss = float(loss_value)
        else:
            logits = self.classifier(self.classifier_dropout(pooled))  # (B, d) -> (B, C)
            head_cache = pool_act_cache
            if labels is not None:
                loss, loss_cache = self._classification_loss(logits, labels)

        self._cache = {
            "head": head,
            "shape": hidden.shape,
            "logits_shape": logits.shape,
            "head_cache": head_cache,
            "loss_cache": loss_cache,
        }
        return ModelOutput(logits=logits, loss=loss, hidden_states=hidden, pooler_output=pooled)

    def _backward(self, dlogits: np.ndarray | None, dloss: float = 1.0) -> None:
        """Accumulate dL/dtheta into every parameter's ``.grad`` for the last forward.

        Starts from dloss (1 by default) times the last call's loss, or from ``dlogits``.
        mlm head, with u = x_L W_t + b_t, a = act(u), n = LN_mlm(a), logits = n E^T + b_mlm:
            dE += dlogits^T n   (the tied decoder),  db_mlm = sum dlogits,  dn = dlogits E,
            then back through LN_mlm, act and the dense layer into dx_L.
        classification head: dpooled = drop'(dlogits W_cls^T); dz = dpooled * (1 - pooled^2);
            dx_L[:, 0] = dz W_pool^T and dx_L[:, 1:] = 0.
        Then back through the blocks in reverse and into the embedding tables.
        """
        cache = self._cache
        if cache is None:
            raise RuntimeError("BERT.backward called without a preceding forward (or twice)")
        if dlogits is None:
            loss_cache = cache["loss_cache"]
            if loss_cache is None:
                raise RuntimeError(
                    "BERT.backward needs a loss: call the model with labels=..., "
                    "or pass dlogits=..."
                )
            dlogits = self._dloss_to_dlogits(cache["head"], loss_cache, dloss)
        else:
            dlogits = np.asarray(dlogits)
            if dlogits.shape != cache["logits_shape"]:
                raise ValueError(
                    f"dlogits must have shape {cache['logits_shape']}, got {dlogits.shape}"
                )
        self._cache = None

        B, T, d = cache["shape"]
        if cache["head"] == "mlm":
            act_cache, decoder_cache = cache["head_cache"]
            table = self.embeddings.word_embeddings.weight
            dn, ddecoder, dbias = linear_backward(
                dlogits, decoder_cache, need_weight=table.requires_grad
            )  # dn (B, T, d)
            if ddecoder is not None:
                table.grad += ddecoder.T  # (d, V) -> (V, d)
            if self.mlm_bias.requires_grad:
                self.mlm_bias.grad += dbias  # (V,)
            da = self.mlm_norm.backward(dn)  # (B, T, d)
            du = self.mlm_act_backward(da, act_cache)  # (B, T, d)
            dx = self.mlm_transform.backward(du)  # (B, T, d)
        else:
            dpooled = self.classifier_dropout.backward(self.classifier.backward(dlogits))  # (B, d)
            dz = tanh_backward(dpooled, cache["head_cache"])  # (B, d)
            dx = np.zeros((B, T, d), dtype=dz.dtype)  # only the first token fed the pooler
            dx[:, 0] = self.pooler.backward(dz)  # (B, d) -> (B, d)
        for layer in reversed(list(self.encoder)):
            dx = layer.backward(dx)  # (B, T, d)
        self.embeddings.backward(dx)

    @staticmethod
    def _dloss_to_dlogits(head: str, loss_cache, dloss: float) -> np.ndarray:
        if head == "mlm":
            return cross_entropy_backward(dloss, loss_cache)  # (B, T, V)
        kind, cache = loss_cache
        if kind == "regression":
            return mse_backward(dloss, cache)  # (B, 1)
        if kind == "multi":
            return bce_with_logits_backward(dloss, cache)  # (B, C)
        return cross_entropy_backward(dloss, cache)  # (B, C)

    # ---- masked-LM data ----------------------------------------------------------------
    @staticmethod
    def mask_tokens(
        input_ids: np.ndarray,
        mask_token_id: int,
        vocab_size: int,
        rng: np.random.Generator,
        mlm_probability: float = 0.15,
        special_ids=(),
    ) -> tuple[np.ndarray, np.ndarray]:
        """BERT's masking rule: returns (masked_input_ids, labels), both shaped like input_ids.

        Each token not in ``special_ids`` is selected with probability ``mlm_probability``.
        A selected token becomes ``mask_token_id`` with probability 0.8, a uniformly random id
        in [0, vocab_size) with probability 0.1, and stays itself with probability 0.1; its
        label is its original id. Unselected tokens keep their id and get label -100. Every
        draw comes from ``rng`` (the same rng state gives the same result).
        """
        ids = np.asarray(input_ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"input_ids must be an integer array, got dtype {ids.dtype}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}")
        if not 0.0 <= mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability!r}")
        if (
            isinstance(vocab_size, bool)
            or not isinstance(vocab_size, (int, np.integer))
            or (vocab_size < 1)
        ):
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        if not 0 <= mask_token_id < vocab_size:
            raise ValueError(
                f"mask_token_id {mask_token_id} is out of range for vocab_size {vocab_size}"
            )
        special = np.asarray(list(special_ids), dtype=np.int64)
        selectable = ~np.isin(ids, special)  # special tokens are never selected
        selected = (rng.random(ids.shape) < mlm_probability) & selectable
        labels = np.where(selected, ids, IGNORE_INDEX).astype(np.int64)
        u = rng.random(ids.shape)  # one draw per token decides mask / random / keep
        to_mask = selected & (u < 0.8)
        to_random = selected & (u >= 0.8) & (u < 0.9)
        masked = ids.copy()
        masked[to_mask] = mask_token_id
        masked[to_random] = rng.integers(0, vocab_size, size=int(to_random.sum()))
        return masked, labels

    # ---- checkpoints ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path, dtype=np.float32) -> BERT:
        """Load a transformers BERT folder (BertForMaskedLM, BertForSequenceClassification or
        BertModel: config.json + model.safetensors); heads absent from the file keep their init."""
        from numpyllm.hf import load_bert

        return load_bert(path, dtype=dtype)

    def save_pretrained(self, path) -> None:
        """Write config.json + model.safetensors that transformers loads."""
        from numpyllm.hf import save_bert

        save_bert(self, path)
