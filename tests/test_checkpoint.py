"""Checkpoint folders: round trip, atomic writes, clear errors, finding the newest."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import load_file

from numpyllm import checkpoint as ckpt
from numpyllm.checkpoint import (
    load_checkpoint,
    load_model,
    resolve_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
)
from numpyllm.models.gpt import GPT, GPTConfig
from numpyllm.optim import AdamW, LRScheduler, param_groups_for_weight_decay, warmup_cosine
from numpyllm.tokenizer import Tokenizer

CONFIG = dict(vocab_size=32, n_layer=1, n_head=2, d_model=16, max_seq_len=16, dropout=0.1)


def tiny_gpt(seed: int = 0) -> GPT:
    return GPT(GPTConfig(**CONFIG), rng=np.random.default_rng(seed))


def trained_state(seed: int = 0, steps: int = 2):
    """A model, AdamW and scheduler after a few real steps (so every state is non-trivial)."""
    model = tiny_gpt(seed)
    optimizer = AdamW(param_groups_for_weight_decay(model, 0.1), lr=1e-2)
    scheduler = LRScheduler(
        optimizer, functools.partial(warmup_cosine, warmup_steps=1, total_steps=10)
    )
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        ids = rng.integers(0, 32, size=(2, 8))
        model(ids, labels=ids)
        model.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def params_of(model) -> dict[str, np.ndarray]:
    return {name: p.data.copy() for name, p in model.named_parameters()}


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert np.array_equal(a[name], b[name]), name


def test_round_trip_restores_everything(tmp_path):
    model, optimizer, scheduler = trained_state()
    tokenizer = Tokenizer.char_level("hello world")
    generator = np.random.default_rng(5)
    trainer_state = {"global_step": 2, "rng": generator.bit_generator.state, "note": [1, 2.5]}
    path = save_checkpoint(
        tmp_path / "checkpoint-2", model, optimizer, scheduler, tokenizer, trainer_state
    )

    names = sorted(p.name for p in path.iterdir())
    assert names == sorted(
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "optimizer.json",
            "optimizer.safetensors",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "trainer_state.json",
        ]
    )
    # a Hugging Face folder: transformers' config and tensor names
    names = {f"transformer.{name}" for name in model.state_dict()}
    assert sorted(load_file(str(path / "model.safetensors"))) == sorted(names)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_embd"] == 16
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert config["eos_token_id"] == tokenizer.eos_token_id  # from the tokenizer

    loaded = load_checkpoint(path)
    assert isinstance(loaded.model, GPT) and loaded.model.config == model.config
    assert_same_params(params_of(loaded.model), params_of(model))
    assert loaded.path == path

    saved = optimizer.state_dict()
    assert loaded.optimizer_state["step"] == saved["step"] == 2
    assert loaded.optimizer_state["param_groups"] == json.loads(json.dumps(saved["param_groups"]))
    assert loaded.optimizer_state["state"].keys() == saved["state"].keys()
    for key, value in saved["state"].items():
        assert loaded.optimizer_state["state"][key].dtype == value.dtype
        assert np.array_equal(loaded.optimizer_state["state"][key], value), key
    assert loaded.scheduler_state == scheduler.state_dict()

    # the restored states continue exactly as the originals do
    optimizer2 = AdamW(param_groups_for_weight_decay(loaded.model, 0.1), lr=1e-2)
    optimizer2.load_state_dict(loaded.optimizer_state)
    ids = np.arange(16).reshape(2, 8)
    for m, opt in ((model, optimizer), (loaded.model, optimizer2)):
        m.eval()
        m(ids, labels=ids)
        m.backward()
        opt.step()
    assert_same_params(params_of(loaded.model), params_of(model))

    assert loaded.tokenizer.encode("hello") == tokenizer.encode("hello")
    restored = np.random.default_rng(0)
    restored.bit_generator.state = loaded.trainer_state["rng"]
    assert np.array_equal(restored.integers(0, 1000, 10), generator.integers(0, 1000, 10))
    assert loaded.trainer_state["note"] == [1, 2.5]


def test_checkpoint_without_optional_parts(tmp_path):
    model = tiny_gpt()
    save_checkpoint(tmp_path / "ck", model)
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.optimizer_state is None and loaded.scheduler_state is None
    assert loaded.trainer_state is None and loaded.tokenizer is None
    assert_same_params(params_of(load_model(tmp_path / "ck")), params_of(model))


def test_float64_model_stays_float64(tmp_path):
    model = tiny_gpt().astype(np.float64)
    save_checkpoint(tmp_path / "ck", model)
    loaded = load_model(tmp_path / "ck")
    assert loaded.dtype == np.float64
    assert_same_params(params_of(loaded), params_of(model))


def test_simple_nn_round_trips(tmp_path):
    """SimpleNN has no config dataclass: its constructor arguments are saved instead."""
    from numpyllm.models.simple_nn import SimpleNN

    model = SimpleNN(in_features=4, hidden=5, rng=np.random.default_rng(1))
    save_checkpoint(tmp_path / "ck", model)
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["model_type"] == "simple_nn"
    assert meta["config"] == {"in_features": 4, "hidden": 5}
    loaded = load_model(tmp_path / "ck")
    assert isinstance(loaded, SimpleNN) and (loaded.in_features, loaded.hidden_size) == (4, 5)
    assert_same_params(params_of(loaded), params_of(model))
    del meta["config"]["hidden"]
    meta["config"]["width"] = 3
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown field.*width"):
        load_model(tmp_path / "ck")


@pytest.mark.parametrize("model_type", ["bert", "t5"])
def test_bert_and_t5_round_trip(tmp_path, model_type):
    if model_type == "bert":
        from numpyllm.models.bert import BERT as cls
        from numpyllm.models.bert import BertConfig

        config = BertConfig(vocab_size=32, n_layer=1, n_head=2, d_model=16, max_seq_len=16)
    else:
        from numpyllm.models.t5 import T5 as cls
        from numpyllm.models.t5 import T5Config

        config = T5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, n_layer=1, n_head=2)
    model = cls(config, rng=np.random.default_rng(2))
    save_checkpoint(tmp_path / "ck", model)
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["model_type"] == model_type
    loaded = load_model(tmp_path / "ck")
    assert type(loaded) is cls and loaded.config == config
    assert_same_params(params_of(loaded), params_of(model))


def test_generator_state_with_arrays_round_trips(tmp_path):
    """MT19937's state holds a uint32 array: JSON must bring it back as that array."""
    generator = np.random.Generator(np.random.MT19937(3))
    save_checkpoint(
        tmp_path / "ck", tiny_gpt(), trainer_state={"rng": generator.bit_generator.state}
    )
    state = load_checkpoint(tmp_path / "ck").trainer_state["rng"]
    restored = np.random.Generator(np.random.MT19937(0))
    restored.bit_generator.state = state
    assert np.array_equal(restored.random(5), generator.random(5))


class _FakeOptimizer:
    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state


_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.int64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
_scalars = st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=5))
_MODEL = tiny_gpt()


@given(
    state=st.dictionaries(
        st.text(alphabet="abcxyz_", min_size=1, max_size=6),
        st.one_of(_arrays, _scalars, st.lists(st.one_of(_arrays, _scalars), max_size=3)),
        max_size=5,
    )
)
def test_any_optimizer_state_round_trips(state):
    """Arrays (any shape, dtype) go to safetensors, the rest to JSON, and come back equal."""
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(Path(tmp) / "ck", _MODEL, optimizer=_FakeOptimizer(state))
        loaded, scheduler_state = ckpt.read_optimizer_state(Path(tmp) / "ck")
    assert scheduler_state is None
    _assert_equal_nested(loaded, state)


def _assert_equal_nested(got, expected):
    if isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray) and got.dtype == expected.dtype
        assert got.shape == expected.shape and np.array_equal(got, expected, equal_nan=True)
    elif isinstance(expected, dict):
        assert got.keys() == expected.keys()
        for key in expected:
            _assert_equal_nested(got[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            _assert_equal_nested(g, e)
    else:
        assert got == expected and type(got) is type(expected)


# ------------------------------------------------------------------ atomicity


def _fail_on(monkeypatch, file_name: str):
    """Make writing ``file_name`` raise half-way through a save (after other files are written)."""
    real = ckpt._write_json

    def failing(path, obj):
        if Path(path).name == file_name:
            raise OSError("disk full (simulated)")
        real(path, obj)

    monkeypatch.setattr(ckpt, "_write_json", failing)


def test_crash_while_replacing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    old_model, optimizer, scheduler = trained_state(seed=0)
    target = tmp_path / "checkpoint-5"
    save_checkpoint(target, old_model, optimizer, scheduler, trainer_state={"global_step": 5})
    new_model, optimizer2, scheduler2 = trained_state(seed=1)
    _fail_on(monkeypatch, "trainer_state.json")
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(target, new_model, optimizer2, scheduler2, trainer_state={"global_step": 5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]  # no temp leftovers
    assert_same_params(params_of(load_model(target)), params_of(old_model))
    assert ckpt.read_trainer_state(target) == {"global_step": 5}


def test_crash_on_a_new_checkpoint_leaves_no_folder(tmp_path, monkeypatch):
    model, optimizer, scheduler = trained_state()
    _fail_on(monkeypatch, "optimizer.json")
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path / "checkpoint-3", model, optimizer, scheduler)
    assert list(tmp_path.iterdir()) == []


def test_saving_over_a_checkpoint_replaces_it(tmp_path):
    target = tmp_path / "checkpoint-1"
    save_checkpoint(target, tiny_gpt(0), trainer_state={"a": 1})
    newer = tiny_gpt(1)
    save_checkpoint(target, newer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]
    assert_same_params(params_of(load_model(target)), params_of(newer))
    assert ckpt.read_trainer_state(target) is None  # nothing of the old folder survives


# --------------------------------------------------------------------- errors


@pytest.fixture
def saved(tmp_path) -> Path:
    model, optimizer, scheduler = trained_state()
    return save_checkpoint(tmp_path / "checkpoint-2", model, optimizer, scheduler)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupted_safetensors_is_a_clear_error(saved, damage):
    file = saved / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes({"garbage": b"not a tensor file" * 10, "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])  # fmt: skip
    with pytest.raises(ValueError, match=r"model\.safetensors in .* is corrupted"):
        load_model(saved)


def test_corrupted_optimizer_tensors_is_a_clear_error(saved):
    (saved / "optimizer.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(ValueError, match=r"optimizer\.safetensors in .* is corrupted"):
        load_checkpoint(saved)


def test_missing_model_type_falls_back_to_architectures(saved):
    meta = json.loads((saved / "config.json").read_text())
    del meta["model_type"]
    (saved / "config.json").write_text(json.dumps(meta))
    assert isinstance(load_model(saved), GPT)
    del meta["architectures"]
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"config\.json in .* model_type None.*gpt2"):
        load_model(saved)


def test_bad_config_values_are_clear_errors(saved):
    meta = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**meta, "model_type": "mamba"}))
    with pytest.raises(ValueError, match="model_type 'mamba'"):
        load_model(saved)
    (saved / "config.json").write_text(json.dumps({k: v for k, v in meta.items()
                                                   if k != "vocab_size"}))  # fmt: skip
    with pytest.raises(ValueError, match="no 'vocab_size'"):
        load_model(saved)
    (saved / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json in .* corrupted or not JSON"):
        load_model(saved)


def test_shape_mismatch_names_the_tensor(saved):
    meta = json.loads((saved / "config.json").read_text())
    meta["n_positions"] = 24  # positions table (24, d) vs saved (16, d)
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"transformer\.wpe\.weight has shape \(16, 16\)"):
        load_model(saved)


def test_missing_tensor_is_named(saved):
    state = load_file(str(saved / "model.safetensors"))
    del state["transformer.ln_f.bias"]
    ckpt._write_tensors(saved / "model.safetensors", state)
    with pytest.raises(ValueError, match=r"missing tensors: transformer\.ln_f\.bias"):
        load_model(saved)


# ------------------------------------------------------------- the older format


def write_old_format(folder: Path, model) -> None:
    """A checkpoint as numpyllm wrote them before its folders became Hugging Face's."""
    folder.mkdir()
    ckpt._write_tensors(folder / "model.safetensors", model.state_dict())
    config = {"model_type": "gpt", "config": dict(CONFIG), "dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config))


def test_old_format_loads_with_a_note_and_resaving_converts(tmp_path):
    model, optimizer, scheduler = trained_state()
    write_old_format(tmp_path / "old", model)
    with pytest.warns(UserWarning, match="older format.*saving it again"):
        loaded = load_model(tmp_path / "old")
    assert isinstance(loaded, GPT) and loaded.config == model.config
    assert_same_params(params_of(loaded), params_of(model))
    save_checkpoint(tmp_path / "new", loaded)
    assert json.loads((tmp_path / "new" / "config.json").read_text())["model_type"] == "gpt2"
    assert_same_params(params_of(load_model(tmp_path / "new")), params_of(model))


@pytest.mark.filterwarnings("ignore:.*older format")
def test_old_format_errors_name_the_field(tmp_path):
    model = tiny_gpt()
    write_old_format(tmp_path / "old", model)
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    del meta["config"]["n_layer"]
    meta["config"]["colour"] = "red"
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"config\.json in .* missing field.*n_layer"):
        load_model(tmp_path / "old")
    meta["config"]["n_layer"] = 1
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown field.*colour"):
        load_model(tmp_path / "old")


def test_unknown_model_class_cannot_be_saved(tmp_path):
    class Custom(GPT):
        pass

    with pytest.raises(ValueError, match="Custom.*registry"):
        save_checkpoint(tmp_path / "ck", Custom(GPTConfig(**CONFIG)))


# -------------------------------------------------------------------- finding


def test_resolve_checkpoint_picks_the_newest(tmp_path):
    model = tiny_gpt()
    for step in (2, 10, 9):
        save_checkpoint(tmp_path / f"checkpoint-{step}", model)
    (tmp_path / ".checkpoint-99.tmp-abc").mkdir()  # a crashed save's leftover: ignored
    (tmp_path / "checkpoint-100.txt").write_text("not a folder")
    assert resolve_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert resolve_checkpoint(tmp_path / "checkpoint-9") == tmp_path / "checkpoint-9"
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 9, 10]


def test_resolve_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        resolve_checkpoint(tmp_path)


def test_rotate_keeps_the_newest(tmp_path):
    model = tiny_gpt()
    for step in (1, 2, 3, 11):
        save_checkpoint(tmp_path / f"checkpoint-{step}", model)
    deleted = rotate_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in deleted) == ["checkpoint-1", "checkpoint-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-11", "checkpoint-3"]


def test_commands_show_the_old_format_note_on_one_line(tmp_path, capsys):
    from numpyllm.cli import main

    tokenizer = Tokenizer.char_level("abcdefghijklmnopqrstuvwxyz ")
    model = GPT(GPTConfig(**{**CONFIG, "vocab_size": tokenizer.vocab_size}))
    write_old_format(tmp_path / "old", model)
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    meta["config"]["vocab_size"] = tokenizer.vocab_size
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    tokenizer.save(tmp_path / "old")
    argv = ["generate", str(tmp_path / "old"), "--prompt", "ab", "--max-new-tokens", "3"]
    assert main(argv) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note" in line]
    assert len(notes) == 1 and notes[0].startswith("numpyllm: note: ")
    assert "older format" in notes[0] and "saving it again" in notes[0]
