"""Text generation: greedy decoding and sampling with temperature, top-k and top-p,
one token at a time with a key-value cache.

Autoregressive decoding feeds each new token back as input. Without a cache,
step t re-runs the model over all t tokens: O(T^2) work for T tokens in all
(O(T^3) counting attention). With a cache, each layer keeps the keys and
values of the tokens already seen, and a step only computes the new token's
query, key and value: O(T) per step.

The logits processors run in the order Hugging Face runs them: temperature,
then top-k, then top-p, so the same settings mean the same thing here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from numpyllm.memory import check_generation_memory

NEG_INF = -np.inf


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """logits / T: T < 1 sharpens the distribution, T > 1 flattens it."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (use do_sample=False)")
    return logits if temperature == 1.0 else logits / np.asarray(temperature, logits.dtype)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits of each row, set the rest to -inf (ties at the k-th kept)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[..., -k, None]  # (B, 1): the k-th largest
    return np.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability
    sums to at least p (always at least one token); set the rest to -inf."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p == 1.0:
        return logits
    order = np.argsort(-logits, axis=-1)  # most likely first
    sorted_logits = np.take_along_axis(logits, order, axis=-1).astype(np.float64)
    probs = np.exp(sorted_logits - sorted_logits[..., :1])
    probs /= probs.sum(axis=-1, keepdims=True)
    before = np.cumsum(probs, axis=-1) - probs  # probability mass strictly before each token
    drop_sorted = before >= p  # the set is complete before this token
    drop = np.empty_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, NEG_INF, logits)


def sample_from_logits(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one id per row from softmax(logits) by inverting the cumulative distribution."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    probs = np.exp(shifted)
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random((logits.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=-1), logits.shape[-1] - 1)


def next_token(
    logits: np.ndarray,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    rng: np.random.Generator,
) -> np.ndarray:
    """(B, V) logits of the last position -> (B,) next ids."""
    if not do_sample:
        return logits.argmax(axis=-1)
    logits = apply_temperature(logits, temperature)
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return sample_from_logits(logits, rng)


def _check_ids(input_ids: Any, vocab_size: int) -> np.ndarray:
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"input_ids must be a non-empty integer array (B, T) or (T,), got "
            f"dtype {ids.dtype} shape {ids.shape}"
        )
    if ids.min() < 0 or ids.max() >= vocab_size:
        bad = ids.max() if ids.max() >= vocab_size else ids.min()
        raise ValueError(f"token id {bad} is out of range for a vocabulary of {vocab_size}")
    return ids.astype(np.int64)


def _new_token_budget(prompt_len: int, max_new_tokens: int | None, max_length: int | None) -> int:
    if max_new_tokens is None:
        max_new_tokens = 20 if max_length is None else max_length - prompt_len
    if max_new_tokens < 0:
        raise ValueError(
            f"max_length {max_length} is shorter than the prompt ({prompt_len} tokens)"
        )
    return max_new_tokens


class _Finished:
    """Tracks which rows have produced eos; finished rows keep emitting pad."""

    def __init__(self, batch: int, eos_token_id: int | None, pad_token_id: int | None):
        self.eos = eos_token_id
        self.pad = pad_token_id if pad_token_id is not None else eos_token_id
        self.done = np.zeros(batch, dtype=bool)

    def update(self, tokens: np.ndarray) -> np.ndarray:
        if self.eos is None or self.pad is None:  # pad is None only when eos is
            return tokens
        tokens = np.where(self.done, self.pad, tokens)
        self.done |= tokens == self.eos
        return tokens

    @property
    def all_done(self) -> bool:
        return self.eos is not None and bool(self.done.all())


def generate_decoder_only(
    model: Any,
    input_ids: Any,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    crop_context: bool = False,
    use_cache: bool = True,
    ignore_memory_check: bool = False,
) -> np.ndarray:
    """Continue each row of ``input_ids`` (B, T) and return (B, T + new) ids.

    ``model.incremental_decoder(batch, max_len)`` must return a decoder whose ``step(ids)``
    feeds the next tokens and returns the last position's logits (numpyllm's GPT does, see
    ``numpyllm.models.gpt_decoding``). A prompt plus continuation longer than the model's
    context is an error unless ``crop_context``, which keeps only the newest ``max_seq_len``
    tokens as context (re-encoding them when the window slides, since learned positions
    shift). ``use_cache=False`` re-encodes the whole window at every step.

    Before anything is allocated, a generation whose KV cache and prompt pass would not fit
    in the memory available raises ``numpyllm.memory.InsufficientMemoryError``, unless
    ``ignore_memory_check``.
    """
    config = model.config
    ids = _check_ids(input_ids, config.vocab_size)
    budget = _new_token_budget(ids.shape[1], max_new_tokens, max_length)
    context = config.max_seq_len
    if not crop_context and ids.shape[1] + budget > context:
        raise ValueError(
            f"prompt ({ids.shape[1]} tokens) + {budget} new tokens exceeds the context length "
            f"{context}; shorten them or pass crop_context=True to keep only the last {context}"
        )
    if not ignore_memory_check:
        check_generation_memory(model, ids.shape[0], ids.shape[1], ids.shape[1] + budget)
    rng = np.random.default_rng(seed)
    finished = _Finished(ids.shape[0], eos_token_id, pad_token_id)
    max_len = min(context, ids.shape[1] + budget)
    with model.incremental_decoder(ids.shape[0], max_len) as decoder:
        window = ids[:, -context:]
        step_input = window
        for _ in range(budget):
            if not use_cache or decoder.length + step_input.shape[1] > max_len:
                # the window slid: learned positions shift, so the cache cannot be kept
                decoder.reset()
                step_input = window
            logits = decoder.step(step_input)  # (B, V), the last position's
            token = finished.update(next_token(logits, do_sample, temperature, top_k, top_p, rng))
            ids = np.concatenate([ids, token[:, None]], axis=1)
            window = ids[:, -context:]
            step_input = token[:, None]
            if finished.all_done:
                break
    return ids


def generate_encoder_decoder(
    model: Any,
    input_ids: Any,
    attention_mask: np.ndarray | None = None,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """T5-style generation: encode once, then decode from the start token.

    Returns the decoder ids (B, 1 + new), starting with the decoder start token,
    as Hugging Face's ``generate`` does. ``max_length`` counts that start token.
    """
    config = model.config
    ids = _check_ids(input_ids, config.vocab_size)
    if max_new_tokens is None and max_length is not None:
        max_new_tokens = max_length - 1
    budget = _new_token_budget(1, max_new_tokens, None)
    eos = config.eos_token_id if eos_token_id is None else eos_token_id
    pad = config.pad_token_id if pad_token_id is None else pad_token_id
    rng = np.random.default_rng(seed)
    finished = _Finished(ids.shape[0], eos, pad)
    was_training = model.training
    model.eval()
    try:
        encoded = model.encode(ids, attention_mask=attention_mask)
        decoded = np.full((ids.shape[0], 1), config.decoder_start_token_id, dtype=np.int64)
        past = None
        step_input = decoded
        for _ in range(budget):
            if not use_cache:
                past, step_input = None, decoded
            out = model(
                attention_mask=attention_mask,
                decoder_input_ids=step_input,
                encoder_outputs=encoded,
                past_key_values=past,
                use_cache=use_cache,
            )
            past = out.past_key_values
            token = finished.update(
                next_token(out.logits[:, -1, :], do_sample, temperature, top_k, top_p, rng)
            )
            decoded = np.concatenate([decoded, token[:, None]], axis=1)
            step_input = token[:, None]
            if finished.all_done:
                break
    finally:
        model.train(was_training)
    return decoded
