"""Training a byte-level BPE: learn which pairs of symbols to merge.

Byte-pair encoding starts from the 256 possible bytes and learns, one at a
time, which adjacent pair of symbols to glue into a new symbol: the pair
that occurs most often in the training text.  After ``N`` merges the
vocabulary holds ``256 + N`` symbols (plus ``<|endoftext|>``), and frequent
words have become single tokens while rare ones stay spelt out in pieces.

Two steps come first, exactly as in GPT-2:

1. **Pre-tokenization.**  A regular expression (GPT-2's by default) cuts the
   text into chunks: a word with its leading space, a number, a run of
   punctuation, a run of whitespace.  Merges never cross a chunk boundary,
   so ``"dog."`` and ``"dog!"`` share the token ``"dog"``.
2. **Counting chunks.**  Shakespeare has ~1M chunks but only ~30k distinct
   ones, so training works on the distinct chunks, each weighted by how often
   it occurs.  This is what makes pure-Python training practical.

**Tie-break.**  When several pairs share the highest count, we merge the
pair whose left symbol entered the vocabulary first, then whose right
symbol did.  The 256 bytes enter first, in byte order; each merged symbol
enters when it is learned.  So an old, short pair wins over a pair built
from symbols learned a moment ago.  This is the rule of Hugging Face's
trainer, which is why the two trainers below learn exactly the same merges
(``tests/test_bpe.py`` checks it).

Two trainers, one result:

* :func:`train_merges_simple` is the teaching version: recount every pair
  over all chunks, merge the best one everywhere, repeat.  Easy to read, and
  its cost is (number of merges) x (size of the chunk table): minutes for a
  4,096-token vocabulary on all of Shakespeare.
* :func:`train_merges_fast` hands the chunk counts to the Rust trainer of
  Hugging Face's ``tokenizers``, which keeps the pair counts up to date
  incrementally (only the chunks holding the merged pair are recounted) and
  finds the next best pair with a priority queue.  Same merges, in well
  under a second.

A symbol is identified by its bytes: merging ``b"th"`` and ``b"e"`` makes
``b"the"``.  If two different merges happen to spell the same bytes, they
make the same symbol, so the vocabulary never holds duplicates.

Encoding with the learned vocabulary is done by ``tiktoken``, from the
ranks that :func:`ranks_from_merges` builds (``tokenizer.py`` wraps them in
a tokenizer: ``train_bpe``); :func:`encode_and_show_work` encodes one chunk
slowly, showing each merge, for learners.  This module depends on no other
tokenizer code: ``tokenizer.py`` builds on it, not the other way round.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import regex

from .errors import TokenizerError

N_BYTES = 256
EOT = "<|endoftext|>"  # separates documents; a special token, never learned from text

# GPT-2's pre-tokenization pattern: contractions, words, numbers, other
# symbols, each optionally led by one space; then whitespace runs.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@dataclass
class BPEConfig:
    """How to train a byte-level BPE (``gpt2lab tokenizer train`` flags)."""
    vocab_size: int = 4096  # bytes + learned merges + <|endoftext|>
    pattern: str = GPT2_PATTERN  # pre-tokenization regex
    impl: str = "fast"  # "fast" (incremental counts) or "simple" (the teaching version)

    def __post_init__(self):
        if self.vocab_size < N_BYTES + 1:
            raise TokenizerError(f"vocab size {self.vocab_size} is too small: a byte-level BPE needs at least "
                                 f"{N_BYTES + 1} tokens (256 bytes + <|endoftext|>); pass --vocab-size 257 or more")
        if self.impl not in TRAINERS:
            raise TokenizerError(f"unknown BPE implementation {self.impl!r}; use one of: {', '.join(TRAINERS)}")
        try:
            regex.compile(self.pattern)
        except regex.error as e:
            raise TokenizerError(f"bad pre-tokenization pattern {self.pattern!r}: {e}") from None


def count_chunks(texts: Iterable[str], pattern: str = GPT2_PATTERN) -> Counter[bytes]:
    """Pre-tokenize ``texts`` and count each distinct chunk (as UTF-8 bytes).
    ``<|endoftext|>`` is a separator, never learned as text."""
    pat = regex.compile(pattern)
    counts: Counter[str] = Counter()
    for text in texts:
        for part in text.split(EOT):
            counts.update(pat.findall(part))
    return Counter({chunk.encode("utf-8"): n for chunk, n in counts.items() if chunk})


# ---------------------------------------------------------------------------
# The teaching trainer
# ---------------------------------------------------------------------------


def best_pair(pair_counts: dict[tuple[bytes, bytes], int], age: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The most frequent pair; on a tie, the one whose symbols are oldest
    (``age[symbol]`` is its place in the vocabulary, left symbol first)."""
    return min(pair_counts, key=lambda pair: (-pair_counts[pair], age[pair[0]], age[pair[1]]))


def merge_word(word: tuple[bytes, ...], pair: tuple[bytes, bytes]) -> tuple[bytes, ...]:
    """Replace every occurrence of ``pair`` in ``word``, left to right
    (so ``a a a`` with pair ``(a, a)`` becomes ``aa a``)."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_merges_simple(chunks: Counter[bytes], n_tokens: int) -> list[tuple[bytes, bytes]]:
    """Learn merges until the vocabulary (256 bytes + merged symbols) has
    ``n_tokens`` symbols, or no pair is left to merge.

    Each chunk is a tuple of symbols, starting as single bytes.  Each round:
    count every adjacent pair, weighted by how often its chunk occurs; merge
    the best pair in every chunk; repeat."""
    words = {tuple(bytes([b]) for b in chunk): n for chunk, n in chunks.items()}
    vocab = {bytes([b]): b for b in range(N_BYTES)}  # symbol -> its age (place in the vocabulary)
    merges = []
    while len(vocab) < n_tokens:
        pair_counts: Counter[tuple[bytes, bytes]] = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pair_counts[pair] += n
        if not pair_counts:
            break  # every chunk is a single symbol: nothing left to learn
        pair = best_pair(pair_counts, vocab)
        merges.append(pair)
        vocab.setdefault(pair[0] + pair[1], len(vocab))  # a repeat spelling keeps its age
        merged: Counter[tuple[bytes, ...]] = Counter()
        for word, n in words.items():
            merged[merge_word(word, pair)] += n
        words = merged
    return merges


# ---------------------------------------------------------------------------
# The fast trainer: the same algorithm, in Rust, by Hugging Face's tokenizers
# ---------------------------------------------------------------------------

# Hugging Face's trainer works on characters.  Byte ``b`` is shown to it as
# the character ``chr(0x100 + b)``: one character per byte, none of them
# whitespace, and in byte order, so that its alphabet (sorted by code point)
# ages the bytes as ours does.
SHOW_BYTES = {b: chr(0x100 + b) for b in range(N_BYTES)}
SEPARATOR = " "  # between repeats of a chunk; never a shown byte


def train_merges_fast(chunks: Counter[bytes], n_tokens: int) -> list[tuple[bytes, bytes]]:
    """Same merges as :func:`train_merges_simple`, by ``tokenizers``' BPE trainer.

    The trainer counts words itself, so a chunk seen ``n`` times is handed
    over as ``n`` copies; chunks of one byte hold no pair and are left out."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.CharDelimiterSplit(SEPARATOR)
    trainer = trainers.BpeTrainer(vocab_size=n_tokens, show_progress=False,
                                  initial_alphabet=list(SHOW_BYTES.values()))
    shown = {chunk: chunk.decode("latin-1").translate(SHOW_BYTES) for chunk in chunks if len(chunk) > 1}
    hf.train_from_iterator((SEPARATOR.join([word] * chunks[chunk]) for chunk, word in shown.items()), trainer)
    merges = json.loads(hf.to_str())["model"]["merges"]
    read = {c: b for b, c in SHOW_BYTES.items()}
    return [tuple(bytes(read[c] for c in symbol) for symbol in split_merge(m)) for m in merges]


def split_merge(merge) -> list[str]:
    """A merge as ``tokenizers`` writes it: a pair, or (before 0.20) one string "left right"."""
    return merge.split(SEPARATOR) if isinstance(merge, str) else merge


TRAINERS = {"fast": train_merges_fast, "simple": train_merges_simple}


def ranks_from_merges(merges: list[tuple[bytes, bytes]]) -> dict[bytes, int]:
    """``{token bytes: rank}`` for tiktoken: the 256 bytes in byte order, then
    each new symbol in the order it was learned (a repeat spelling is skipped)."""
    ranks = {bytes([b]): b for b in range(N_BYTES)}
    for a, b in merges:
        ranks.setdefault(a + b, len(ranks))
    return ranks


# ---------------------------------------------------------------------------
# Watching the encoder work
# ---------------------------------------------------------------------------


def encode_and_show_work(chunk: bytes, ranks: dict[bytes, int]) -> list[list[bytes]]:
    """Encode one pre-tokenized chunk the way GPT-2 (and tiktoken) do, and
    return every intermediate state: start from single bytes, then merge the
    adjacent pair whose concatenation has the lowest rank (leftmost on a
    tie), until no adjacent pair is a token.  The last state is the result."""
    parts = [bytes([b]) for b in chunk]
    steps = [list(parts)]
    while len(parts) > 1:
        candidates = [(ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
        candidates = [(r, i) for r, i in candidates if r is not None]
        if not candidates:
            break
        _, i = min(candidates)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
        steps.append(list(parts))
    return steps
