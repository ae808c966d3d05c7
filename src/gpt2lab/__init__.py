"""gpt2lab: GPT-2 from scratch, trained on Shakespeare on your laptop."""

from .model import GPT, GPTConfig, KVCache, PRESETS
from .tokenizer import Tokenizer, gpt2_tokenizer, load_tokenizer

__all__ = ["GPT", "GPTConfig", "KVCache", "PRESETS", "Tokenizer", "gpt2_tokenizer", "load_tokenizer"]
__version__ = "0.1.0"
