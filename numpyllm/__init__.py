"""numpyllm: the maths inside a large language model, written out in NumPy.

Every forward and every backward pass is written by hand (``numpyllm.functional``),
wrapped in layers (``numpyllm.nn``), assembled into GPT, BERT, T5 and Llama
(``numpyllm.models``) and trained with hand-written optimizers (``numpyllm.optim``).
"""

from numpyllm import functional, nn, optim, peft
from numpyllm.data import TokenDataset, builtin_corpus
from numpyllm.gradcheck import gradcheck, gradcheck_model, numerical_gradient
from numpyllm.memory import InsufficientMemoryError, MemoryReport, memory_report
from numpyllm.models import (
    BERT,
    GPT,
    T5,
    BertConfig,
    GPTConfig,
    Llama,
    LlamaConfig,
    ModelOutput,
    SimpleNN,
    T5Config,
)
from numpyllm.nn.allocator import keep_freed_memory
from numpyllm.tokenizer import Tokenizer
from numpyllm.trainer import Trainer
from numpyllm.training_args import TrainingArguments

__version__ = "0.1.0"

# Training allocates and frees the same arrays every step: keep their pages (see the module).
keep_freed_memory()

__all__ = [
    "BERT",
    "GPT",
    "T5",
    "BertConfig",
    "GPTConfig",
    "InsufficientMemoryError",
    "MemoryReport",
    "Llama",
    "LlamaConfig",
    "ModelOutput",
    "SimpleNN",
    "T5Config",
    "TokenDataset",
    "Tokenizer",
    "Trainer",
    "TrainingArguments",
    "builtin_corpus",
    "functional",
    "gradcheck",
    "gradcheck_model",
    "memory_report",
    "nn",
    "numerical_gradient",
    "optim",
    "peft",
]
