"""GPT with its batch split over threads (``num_threads``) computes what one thread computes:
the same logits, loss, hidden states and gradients, whatever the split and the label mask."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.models.gpt import GPT, GPTConfig
from numpyllm.nn.parallel import available_cores, batch_slices
from numpyllm.optim import AdamW

VOCAB, T_MAX = 31, 12
RTOL, ATOL = 1e-10, 1e-12


def make_model(seed: int = 0, **overrides) -> GPT:
    fields = dict(vocab_size=VOCAB, n_layer=2, n_head=2, d_model=16, max_seq_len=T_MAX,
                  dropout=0.0, init_std=0.2)  # fmt: skip
    fields.update(overrides)
    model = GPT(GPTConfig(**fields), rng=np.random.default_rng(seed))
    return model.astype(np.float64)


def run(model: GPT, threads, ids, labels=None, attention_mask=None, dlogits=None):
    """One forward and backward from zero gradients; the output and a copy of every gradient."""
    model.num_threads = threads
    model.zero_grad()
    out = model(ids, labels=labels, attention_mask=attention_mask)
    model.backward(dlogits)
    return out, {name: p.grad.copy() for name, p in model.named_parameters()}


def assert_same(result, reference):
    (out, grads), (ref, ref_grads) = result, reference
    np.testing.assert_allclose(out.logits, ref.logits, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out.hidden_states, ref.hidden_states, rtol=RTOL, atol=ATOL)
    if ref.loss is None:
        assert out.loss is None
    else:
        assert out.loss == pytest.approx(ref.loss, rel=RTOL, abs=ATOL)
    assert list(grads) == list(ref_grads)
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, ref_grads[name], rtol=RTOL, atol=ATOL, err_msg=name)


def masked_labels(rng, shape, keep: float) -> np.ndarray:
    labels = rng.integers(0, VOCAB, size=shape)
    labels[rng.random(shape) >= keep] = -100
    return labels


@st.composite
def batches(draw):
    """ids (B, T), labels (B, T) or (B, T + 1) with a random share ignored, and maybe a
    left-padding attention mask."""
    B = draw(st.integers(1, 6))
    T = draw(st.integers(1, T_MAX - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids = rng.integers(0, VOCAB, size=(B, T))
    extra = draw(st.booleans())
    keep = draw(st.sampled_from([1.0, 0.6, 0.2, 0.0]))
    labels = masked_labels(rng, (B, T + extra), keep)
    mask = None
    if draw(st.booleans()):
        lengths = rng.integers(1, T + 1, size=B)
        mask = (np.arange(T)[None, :] >= T - lengths[:, None]).astype(np.int64)
    return ids, labels, mask


# ---- split == serial -------------------------------------------------------------------
@given(batch=batches(), threads=st.integers(2, 4), seed=st.integers(0, 3))
def test_split_forward_and_backward_match_one_thread(batch, threads, seed):
    ids, labels, mask = batch
    model = make_model(seed)
    reference = run(model, 1, ids, labels, mask)
    assert model._replicas == []
    assert_same(run(model, threads, ids, labels, mask), reference)
    parts = len(batch_slices(ids.shape[0], threads))
    assert len(model._replicas) == parts - 1  # the batch really was split
    for replica in model._replicas:  # replica gradients are added in and freed
        assert all(p.grad is None for p in replica.parameters())


@given(batch=batches(), threads=st.integers(2, 4))
def test_split_backward_from_given_dlogits_matches_one_thread(batch, threads):
    ids, _, mask = batch
    model = make_model()
    dlogits = np.random.default_rng(ids.size).standard_normal((*ids.shape, VOCAB))
    reference = run(model, 1, ids, attention_mask=mask, dlogits=dlogits)
    assert reference[0].loss is None
    assert_same(run(model, threads, ids, attention_mask=mask, dlogits=dlogits), reference)


@pytest.mark.parametrize(
    "B, threads, ignored_rows",
    [
        (4, 2, [0, 1]),  # the model's own part has no valid token
        (4, 2, [2, 3]),  # the replica's part has none
        (5, 3, [2, 3]),  # a middle part (rows 1-2 / 3-4) partly, one fully
        (6, 3, [0, 1, 2, 3, 4, 5]),  # nothing at all: loss 0, gradients 0
        (5, 2, [0]),  # parts of 3 and 2 rows with 2 and 2 valid rows
    ],
)
def test_parts_with_uneven_or_no_valid_tokens(B, threads, ignored_rows):
    rng = np.random.default_rng(B * 10 + threads)
    ids = rng.integers(0, VOCAB, size=(B, 8))
    labels = masked_labels(rng, (B, 9), keep=0.5)
    labels[:, 1] = ids[:, 0]  # every kept row has at least one valid target
    labels[ignored_rows] = -100
    model = make_model(1)
    reference = run(model, 1, ids, labels)
    result = run(model, threads, ids, labels)
    assert_same(result, reference)
    if len(ignored_rows) == B:
        assert result[0].loss == 0.0
        assert all(not np.any(g) for g in result[1].values())
    else:
        assert result[0].loss > 0.0


def test_split_loss_is_the_token_weighted_mean_not_the_mean_of_parts():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, VOCAB, size=(4, 10))
    labels = ids.copy()
    labels[0, 2:] = -100  # part 0 (rows 0-1): 1 + 9 valid targets; part 1: 18
    model = make_model(2)
    serial = run(model, 1, ids, labels)[0].loss
    split = run(model, 2, ids, labels)[0].loss
    halves = [run(model, 1, ids[rows], labels[rows])[0].loss for rows in (slice(0, 2), slice(2, 4))]
    assert split == pytest.approx(serial, rel=RTOL)
    assert split == pytest.approx((10 * halves[0] + 18 * halves[1]) / 28, rel=RTOL)
    assert abs(split - np.mean(halves)) > 1e-6


def test_auto_uses_the_available_cores_for_a_large_enough_pass(monkeypatch):
    from numpyllm.nn import parallel

    ids = np.random.default_rng(0).integers(0, VOCAB, size=(4, 6))
    model = make_model()
    reference = run(model, 1, ids, ids)
    assert GPT.num_threads == "auto"
    work = ids.size * model.config.d_model
    monkeypatch.setattr(parallel, "MIN_SPLIT_WORK", work + 1)  # too small a pass: one part
    assert_same(run(model, "auto", ids, ids), reference)
    assert model._replicas == []
    monkeypatch.setattr(parallel, "MIN_SPLIT_WORK", work)
    assert_same(run(model, "auto", ids, ids), reference)
    assert len(model._replicas) == min(available_cores(), 4) - 1


@pytest.mark.parametrize("threads", [0, 1])
def test_one_or_no_threads_does_not_split(threads):
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(4, 6))
    model = make_model()
    run(model, threads, ids, ids)
    assert model._replicas == []


# ---- never split -----------------------------------------------------------------------
def test_single_row_is_never_split():
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(1, 9))
    model = make_model()
    reference = run(model, 1, ids, ids)
    assert_same(run(model, 4, ids, ids), reference)
    assert model._replicas == []


def test_use_cache_is_never_split():
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(3, 8))
    model = make_model()
    model.num_threads = 1
    ref = model(ids[:, :5], use_cache=True)
    ref_next = model(ids[:, 5:], past_key_values=ref.past_key_values, use_cache=True)
    model.num_threads = 3
    out = model(ids[:, :5], use_cache=True)
    assert model._replicas == [] and model._parts is None
    nxt = model(ids[:, 5:], past_key_values=out.past_key_values, use_cache=True)
    assert model._replicas == []
    np.testing.assert_allclose(out.logits, ref.logits, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(nxt.logits, ref_next.logits, rtol=RTOL, atol=ATOL)
    assert len(nxt.past_key_values) == 2
    for (k, v), (rk, rv) in zip(nxt.past_key_values, ref_next.past_key_values):
        assert k.shape == (3, 2, 8, 8)
        np.testing.assert_allclose(k, rk, rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(v, rv, rtol=RTOL, atol=ATOL)


def test_greedy_generation_is_the_same_with_threads():
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(3, 4))
    model = make_model()
    model.num_threads = 1
    reference = model.generate(ids, max_new_tokens=5)
    model.num_threads = 3
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=5), reference)


def test_past_key_values_without_use_cache_match_one_thread():
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(2, 6))
    model = make_model()
    model.num_threads = 1
    past = model(ids[:, :4], use_cache=True).past_key_values
    full = model(ids).logits[:, 4:]
    model.num_threads = 2
    logits = model(ids[:, 4:], past_key_values=past).logits
    np.testing.assert_allclose(logits, full, rtol=1e-9, atol=1e-12)


# ---- backward errors -------------------------------------------------------------------
def test_second_backward_raises_and_leaves_gradients_alone():
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(4, 6))
    model = make_model()
    _, grads = run(model, 2, ids, ids)
    with pytest.raises(RuntimeError):
        model.backward()
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, grads[name])


def test_backward_without_a_loss_raises_as_one_thread_does():
    ids = np.random.default_rng(0).integers(0, VOCAB, size=(4, 6))
    model = make_model()
    model.num_threads = 2
    model(ids)
    with pytest.raises(RuntimeError, match="loss"):
        model.backward()


def test_backward_from_dlogits_after_a_refused_backward_matches_one_thread():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, size=(4, 6))
    dlogits = rng.standard_normal((4, 6, VOCAB))
    model = make_model()
    reference = run(model, 1, ids, dlogits=dlogits)
    model.num_threads = 2
    model.zero_grad()
    out = model(ids)
    with pytest.raises(RuntimeError):
        model.backward()
    model.backward(dlogits)  # one thread accepts this retry
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    assert_same((out, grads), reference)


def test_backward_without_forward_raises():
    model = make_model()
    model.num_threads = 2
    with pytest.raises(RuntimeError):
        model.backward()


@pytest.mark.parametrize("shape", [(4, 6, VOCAB + 1), (2, 6, VOCAB), (4, 5, VOCAB), (3, 6, VOCAB)])
def test_wrong_dlogits_shape_raises_and_a_right_one_still_works(shape):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, size=(4, 6))
    dlogits = rng.standard_normal((4, 6, VOCAB))
    model = make_model()
    reference = run(model, 1, ids, dlogits=dlogits)
    model.num_threads = 2
    model.zero_grad()
    out = model(ids)
    with pytest.raises(ValueError, match="dlogits"):
        model.backward(np.zeros(shape))
    assert all(not np.any(p.grad) for p in model.parameters())
    model.backward(dlogits)
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    assert_same((out, grads), reference)


# ---- training ----------------------------------------------------------------------------
def test_gradients_accumulate_over_split_steps():
    rng = np.random.default_rng(5)
    ids = rng.integers(0, VOCAB, size=(5, 7))
    labels = masked_labels(rng, (5, 7), keep=0.7)
    model = make_model(3)
    _, once = run(model, 3, ids, labels)
    model.zero_grad()
    for _ in range(2):
        model(ids, labels=labels)
        model.backward()
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[name], rtol=RTOL, atol=ATOL, err_msg=name)
    assert any(np.any(g) for g in once.values())


def test_adamw_steps_match_one_thread_and_replicas_follow_the_flat_buffers():
    rng = np.random.default_rng(6)
    ids = rng.integers(0, VOCAB, size=(4, 8))
    labels = masked_labels(rng, (4, 9), keep=0.8)
    serial, split = make_model(4), make_model(4)
    serial.num_threads, split.num_threads = 1, 2
    split(ids, labels=labels)  # replicas made now, on the arrays from before the optimizer
    replica = split._replicas[0]
    before = [p.data for p in replica.parameters()]
    optimizers = [AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in (serial, split)]
    for _ in range(3):
        losses = []
        for model, opt in zip((serial, split), optimizers):
            opt.zero_grad()
            losses.append(model(ids, labels=labels).loss)
            model.backward()
            opt.step()
        assert losses[1] == pytest.approx(losses[0], rel=1e-9)
    # the key bias has a zero gradient in exact arithmetic: Adam scales its rounding noise
    # up to ~1e-11, far below the ~1e-2 steps of the other parameters
    for (name, p), q in zip(serial.named_parameters(), split.parameters()):
        np.testing.assert_allclose(q.data, p.data, rtol=1e-9, atol=1e-9, err_msg=name)
    # the replica now reads the optimizer's buffers, not the arrays it was made with
    for p, r, old in zip(split.parameters(), replica.parameters(), before):
        assert r.data is p.data
        assert r.data is not old
    assert not np.allclose(before[0], split.parameters()[0].data)
    # and a split forward after the steps is the serial one
    split_out = split(ids, labels=labels)
    split.num_threads = 1
    serial_out = split(ids, labels=labels)
    np.testing.assert_allclose(split_out.logits, serial_out.logits, rtol=RTOL, atol=ATOL)
    assert split_out.loss == pytest.approx(serial_out.loss, rel=RTOL)


def test_dropout_in_split_training_is_deterministic_and_active():
    rng = np.random.default_rng(7)
    ids = rng.integers(0, VOCAB, size=(4, 10))
    runs = []
    for _ in range(2):  # two models seeded alike
        model = make_model(8, dropout=0.3)
        model.num_threads = 2
        steps = []
        for _ in range(3):
            out = model(ids, labels=ids)
            model.backward()
            steps.append((out.loss, out.logits.copy(), model.wte.weight.grad.copy()))
        runs.append(steps)
    for (loss_a, logits_a, grad_a), (loss_b, logits_b, grad_b) in zip(*runs):
        assert loss_a == loss_b
        np.testing.assert_array_equal(logits_a, logits_b)
        np.testing.assert_array_equal(grad_a, grad_b)
    losses = [loss for loss, _, _ in runs[0]]
    assert len(set(losses)) == 3  # fresh masks every step

    model.eval()
    clean = model(ids, labels=ids)
    assert all(abs(loss - clean.loss) > 1e-6 for loss in losses)
    for _, logits, _ in runs[0]:
        for rows in batch_slices(4, 2):  # both the model's rows and the replica's are dropped
            assert not np.allclose(logits[rows], clean.logits[rows])


def test_split_eval_mode_with_dropout_matches_one_thread():
    ids = np.random.default_rng(9).integers(0, VOCAB, size=(4, 10))
    model = make_model(8, dropout=0.3)
    model.num_threads = 2
    model(ids, labels=ids)  # replicas made while training
    model.eval()
    reference = run(model, 1, ids, ids)
    assert_same(run(model, 2, ids, ids), reference)
    assert not any(m.training for m in model._replicas[0].modules())


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_split_with_recomputed_activations_matches_storing_them(dropout):
    rng = np.random.default_rng(10)
    ids = rng.integers(0, VOCAB, size=(5, 9))
    labels = masked_labels(rng, (5, 9), keep=0.7)
    results = []
    for recompute in (False, True):
        model = make_model(11, dropout=dropout)
        model.recompute_activations = recompute
        results.append(run(model, 3, ids, labels))  # same seeds: same dropout masks
    assert_same(results[1], results[0])
    if dropout == 0.0:
        assert_same(results[1], run(make_model(11), 1, ids, labels))


def test_attention_and_mlp_in_blocks_of_rows_match_one_block(monkeypatch):
    """Attention and the MLP run over blocks of rows; loss and gradients are the one-block
    ones, with the default blocks and with the recompute ones."""
    from numpyllm.models import gpt
    from numpyllm.nn import execution

    ids = np.random.default_rng(0).integers(0, VOCAB, size=(3, 7))
    reference = run(make_model(), 1, ids, ids)
    for rows in (1, 2, 5):
        blocks = gpt.BlockSizes(attention_elements=rows * 2 * 7 * 7, mlp_rows=rows)  # H=2, T=7
        monkeypatch.setattr(execution, "BLOCKS", blocks)
        recompute_blocks = gpt.BlockSizes(attention_elements=1, mlp_rows=rows + 1)
        monkeypatch.setattr(execution, "BLOCKS_RECOMPUTE", recompute_blocks)
        assert_same(run(make_model(), 1, ids, ids), reference)
        recomputing = make_model()
        recomputing.recompute_activations = True
        assert_same(run(recomputing, 1, ids, ids), reference)
        for block in recomputing.h:
            assert block.mlp.blocks is block.attn.blocks is recompute_blocks


def test_backward_after_a_failed_split_forward_raises(monkeypatch):
    """A part that raises leaves no forward to go back through, as with one thread: the
    first part's own state is dropped, not taken for the batch's."""
    ids = np.random.default_rng(3).integers(0, VOCAB, size=(4, 5))
    model = make_model()
    run(model, 2, ids, ids)  # makes the replica

    def boom(*args, **kwargs):
        raise ArithmeticError("a part failed")

    monkeypatch.setattr(model._replicas[0], "_forward", boom)
    model.zero_grad()
    with pytest.raises(ArithmeticError, match="a part failed"):
        model(ids, labels=ids)
    with pytest.raises(RuntimeError, match="without a preceding forward"):
        model.backward()
    assert all(not np.any(p.grad) for p in model.parameters())
