"""gpt2lab: GPT-2 from scratch, trained on Shakespeare on your laptop."""

# The names below are imported on first use (PEP 562), so that commands that
# do not need PyTorch (``gpt2lab tokenize``, ``gpt2lab tokenizer train``)
# start without importing it.
_EXPORTS = {"GPT": "model", "GPTConfig": "model", "KVCache": "model", "PRESETS": "model",
            "Tokenizer": "tokenizer", "gpt2_tokenizer": "tokenizer", "load_tokenizer": "tokenizer"}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpt2lab' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
