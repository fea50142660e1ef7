"""Weight-decay parameter groups: the right names in the right groups."""

import numpy as np
import pytest

from numpyllm.nn.parameter import Parameter
from numpyllm.optim import AdamW, param_groups_for_weight_decay


class TinyModel:
    """Stands in for a Module: named_parameters() with GPT-, BERT- and T5-style names."""

    def __init__(self):
        wte = Parameter(np.ones((10, 4)))
        self.named = [
            ("transformer.wte.weight", wte),
            ("transformer.wpe.weight", Parameter(np.ones((8, 4)))),
            ("transformer.h.0.ln_1.weight", Parameter(np.ones(4))),
            ("transformer.h.0.ln_1.bias", Parameter(np.ones(4))),
            ("transformer.h.0.attn.c_attn.weight", Parameter(np.ones((4, 12)))),
            ("transformer.h.0.attn.c_attn.bias", Parameter(np.ones(12))),
            ("transformer.h.0.mlp.c_fc.weight", Parameter(np.ones((4, 16)))),
            ("lm_head.weight", wte),  # tied to wte: placed once, by its first name
            ("bert.embeddings.word_embeddings.weight", Parameter(np.ones((10, 4)))),
            ("bert.embeddings.LayerNorm.weight", Parameter(np.ones(4))),
            ("shared.weight", Parameter(np.ones((10, 4)))),
            (
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                Parameter(np.ones((32, 2))),
            ),
            ("encoder.block.0.layer.0.SelfAttention.q.weight", Parameter(np.ones((4, 4)))),
            ("decoder.embed_tokens.weight", Parameter(np.ones((10, 4)))),
            ("scalar_gate", Parameter(np.ones(()))),
        ]

    def named_parameters(self):
        return iter(self.named)


DECAY = [
    "transformer.h.0.attn.c_attn.weight",
    "transformer.h.0.mlp.c_fc.weight",
    "encoder.block.0.layer.0.SelfAttention.q.weight",
]
NO_DECAY = [
    "transformer.wte.weight",
    "transformer.wpe.weight",
    "transformer.h.0.ln_1.weight",
    "transformer.h.0.ln_1.bias",
    "transformer.h.0.attn.c_attn.bias",
    "bert.embeddings.word_embeddings.weight",
    "bert.embeddings.LayerNorm.weight",
    "shared.weight",
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
    "decoder.embed_tokens.weight",
    "scalar_gate",
]


def test_names_land_in_the_right_groups():
    model = TinyModel()
    decay, no_decay = param_groups_for_weight_decay(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["names"] == DECAY
    assert no_decay["names"] == NO_DECAY
    by_name = dict(model.named)
    assert decay["params"] == [by_name[n] for n in DECAY]
    assert all(a is by_name[n] for a, n in zip(no_decay["params"], NO_DECAY))


def test_named_pairs_work_like_a_model():
    model = TinyModel()
    from_model = param_groups_for_weight_decay(model, 0.1)
    from_pairs = param_groups_for_weight_decay(list(model.named), 0.1)
    assert [g["names"] for g in from_pairs] == [g["names"] for g in from_model]


def test_groups_feed_adamw_and_only_the_decay_group_decays():
    model = TinyModel()
    opt = AdamW(param_groups_for_weight_decay(model, 0.5), lr=0.1)
    opt.step()  # all gradients zero: only decoupled decay can move a weight
    for name, p in model.named:
        expected = 1.0 - 0.1 * 0.5 if name in DECAY else 1.0
        np.testing.assert_allclose(p.data, expected, rtol=1e-15, err_msg=name)


def test_empty_groups_are_kept():
    only_bias = [("bias", Parameter(np.zeros(3)))]
    decay, no_decay = param_groups_for_weight_decay(only_bias, 0.1)
    assert decay["params"] == [] and len(no_decay["params"]) == 1
    AdamW([decay, no_decay])  # an empty group is fine as long as some group has parameters


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups_for_weight_decay(TinyModel(), -0.1)
    with pytest.raises(TypeError, match="pairs"):
        param_groups_for_weight_decay([Parameter(np.zeros(2))], 0.1)
