"""numpyllm tokenizers against transformers: a saved tokenizer.json gives the same ids.

What numpyllm saves must work unchanged in ``transformers``, both as a single file
(``PreTrainedTokenizerFast(tokenizer_file=...)``) and as a folder
(``from_pretrained``, which also reads the special-token roles).
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from numpyllm.data import builtin_corpus
from numpyllm.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello, world!",
    "  leading spaces and trailing   ",
    "def f(x):\n    return x ** 2\n\n\nprint(f(3))",
    "Unicode: café, 日本語, emoji 😀, combining e\u0301, zero\u200bwidth",
    "special<|endoftext|>tokens<pad>in<mask>text",
    "",
]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe(builtin_corpus()[:100_000], vocab_size=800)


@pytest.fixture(scope="module")
def chars() -> Tokenizer:
    return Tokenizer.char_level(builtin_corpus()[:20_000])


@pytest.fixture(scope="module")
def hf_bpe(bpe, tmp_path_factory):
    path = bpe.save(tmp_path_factory.mktemp("bpe") / "tokenizer.json")
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))


@pytest.mark.parametrize("kind", ["bpe", "chars"])
def test_tokenizer_file_gives_the_same_ids(kind, request, tmp_path):
    ours = request.getfixturevalue(kind)
    path = ours.save(tmp_path / "tokenizer.json")
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    assert len(theirs) == ours.vocab_size
    assert theirs.get_vocab() == ours.get_vocab()
    for text in TEXTS:
        ids = ours.encode(text)
        assert theirs.encode(text) == ids
        assert theirs.tokenize(text) == ours.tokenize(text)
        assert theirs.convert_tokens_to_ids(ours.tokenize(text)) == ids
        assert theirs.decode(ids, clean_up_tokenization_spaces=False) == ours.decode(ids)
        assert theirs.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        ) == ours.decode(ids, skip_special_tokens=True)


@given(text=st.text(max_size=100))
def test_bpe_ids_match_on_any_text(bpe, hf_bpe, text):
    assert hf_bpe.encode(text) == bpe.encode(text)
    assert hf_bpe.decode(bpe.encode(text), clean_up_tokenization_spaces=False) == text


@pytest.mark.parametrize("kind", ["bpe", "chars"])
def test_saved_folder_carries_the_special_tokens(kind, request, tmp_path):
    ours = request.getfixturevalue(kind)
    ours.save(tmp_path)
    theirs = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
    assert theirs.eos_token_id == ours.eos_token_id is not None
    assert theirs.bos_token_id == ours.bos_token_id
    assert theirs.pad_token_id == ours.pad_token_id is not None
    assert theirs.mask_token_id == ours.mask_token_id is not None
    assert theirs.unk_token_id == ours.unk_token_id
    assert theirs.encode(TEXTS[3]) == ours.encode(TEXTS[3])


def test_a_folder_saved_by_transformers_loads(bpe, tmp_path):
    theirs = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(bpe.save(tmp_path / "ours.json")),
        eos_token="<|endoftext|>",
        pad_token="<pad>",
    )
    theirs.save_pretrained(str(tmp_path / "hf"))
    ours = Tokenizer.load(tmp_path / "hf")
    assert ours.eos_token_id == bpe.eos_token_id and ours.pad_token_id == bpe.pad_token_id
    assert ours.mask_token_id is None  # transformers was not told about a mask token
    for text in TEXTS:
        assert ours.encode(text) == bpe.encode(text)
