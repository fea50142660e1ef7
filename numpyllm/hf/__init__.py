"""Hugging Face interop: load transformers checkpoints into numpyllm models and save numpyllm
models as checkpoints transformers loads, without torch.

A checkpoint is a folder with ``config.json`` and ``model.safetensors`` (what transformers'
``save_pretrained`` writes). Supported classes (see docs/huggingface.md):

    GPT-2  GPT2LMHeadModel, GPT2Model                                  <-> numpyllm GPT
    BERT   BertForMaskedLM, BertForSequenceClassification, BertModel   <-> numpyllm BERT
    T5     T5ForConditionalGeneration                                  <-> numpyllm T5
    Llama  LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM      <-> numpyllm Llama

    model = load_gpt2("gpt2-folder")           # numpyllm GPT, eval mode, float32
    save_gpt2(model, "out")                    # GPT2LMHeadModel.from_pretrained("out") loads it

``registry`` maps config.json's model_type to the module that reads and writes it (every
checkpoint numpyllm saves is such a folder); ``cache`` finds a model name such as ``gpt2`` in
the local Hugging Face cache; ``tensor_file`` reads safetensors headers first and each tensor
straight into its parameter.
"""

from numpyllm.hf.bert import load_bert, save_bert
from numpyllm.hf.common import CheckpointNotFoundError, read_config, read_tensors
from numpyllm.hf.gpt2 import load_gpt2, save_gpt2
from numpyllm.hf.llama import load_llama, save_llama
from numpyllm.hf.t5 import load_t5, save_t5

__all__ = [
    "CheckpointNotFoundError",
    "load_bert",
    "load_gpt2",
    "load_llama",
    "load_t5",
    "read_config",
    "read_tensors",
    "save_bert",
    "save_gpt2",
    "save_llama",
    "save_t5",
]
