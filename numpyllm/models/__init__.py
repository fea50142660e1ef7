"""The models: one file each, readable top to bottom."""

from numpyllm.models.bert import BERT, BertConfig
from numpyllm.models.gpt import GPT, GPTConfig
from numpyllm.models.llama import Llama, LlamaConfig
from numpyllm.models.output import ModelOutput
from numpyllm.models.simple_nn import SimpleNN
from numpyllm.models.t5 import T5, T5Config

__all__ = [
    "BERT",
    "GPT",
    "T5",
    "BertConfig",
    "GPTConfig",
    "Llama",
    "LlamaConfig",
    "ModelOutput",
    "SimpleNN",
    "T5Config",
]
