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
pair whose two byte strings are lexicographically smallest, comparing
``(left_bytes, right_bytes)`` as a tuple.  Both trainers below apply this
rule, so they learn exactly the same merges (``tests/test_bpe.py``).

Two trainers, one result:

* :func:`train_merges_simple` is the teaching version: recount every pair
  over all chunks, merge the best one everywhere, repeat.  Easy to read, and
  its cost is (number of merges) x (size of the chunk table).
* :func:`train_merges_fast` keeps the pair counts up to date incrementally:
  after a merge, only the chunks that contained the merged pair are
  recounted, and a heap finds the next best pair.  Same merges, much faster.

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

import heapq
from collections import Counter, defaultdict
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


def best_pair(pair_counts: dict[tuple[bytes, bytes], int]) -> tuple[bytes, bytes]:
    """The most frequent pair; on a tie, the lexicographically smallest one."""
    return min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))


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
    vocab = {bytes([b]) for b in range(N_BYTES)}
    merges = []
    while len(vocab) < n_tokens:
        pair_counts: Counter[tuple[bytes, bytes]] = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pair_counts[pair] += n
        if not pair_counts:
            break  # every chunk is a single symbol: nothing left to learn
        pair = best_pair(pair_counts)
        merges.append(pair)
        vocab.add(pair[0] + pair[1])
        merged: Counter[tuple[bytes, ...]] = Counter()
        for word, n in words.items():
            merged[merge_word(word, pair)] += n
        words = merged
    return merges


# ---------------------------------------------------------------------------
# The fast trainer: the same algorithm with incremental counts
# ---------------------------------------------------------------------------


def train_merges_fast(chunks: Counter[bytes], n_tokens: int) -> list[tuple[bytes, bytes]]:
    """Same merges as :func:`train_merges_simple`, without recounting.

    * ``pair_counts[pair]`` is kept exact: when a chunk changes, its old
      pairs are subtracted and its new pairs added.
    * ``where[pair]`` lists the chunks that may hold ``pair``, so a merge
      only visits those (entries may be stale; a stale one costs a recount).
    * A heap of ``(-count, pair)`` gives the best pair with the same
      tie-break.  Entries go stale when a count changes; a popped entry is
      used only if its count is still current (lazy deletion)."""
    symbol_id: dict[bytes, int] = {bytes([b]): b for b in range(N_BYTES)}
    symbols: list[bytes] = [bytes([b]) for b in range(N_BYTES)]
    words: list[list[int]] = [list(chunk) for chunk in chunks]
    freqs: list[int] = list(chunks.values())
    pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (word, n) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += n
            where[pair].add(w)

    def entry(pair):
        return (-pair_counts[pair], symbols[pair[0]], symbols[pair[1]], pair)

    heap = [entry(p) for p in pair_counts]
    heapq.heapify(heap)
    merges = []
    while len(symbols) < n_tokens and heap:
        neg, _, _, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg or neg == 0:
            continue  # stale entry
        a, b = symbols[pair[0]], symbols[pair[1]]
        merges.append((a, b))
        new = symbol_id.get(a + b)
        if new is None:
            new = symbol_id[a + b] = len(symbols)
            symbols.append(a + b)
        changed = set()
        for w in where.pop(pair):
            word, n = words[w], freqs[w]
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            if len(merged) == len(word):
                continue  # stale `where` entry: the pair is no longer here
            for p in zip(word, word[1:]):
                pair_counts[p] -= n
                changed.add(p)
            for p in zip(merged, merged[1:]):
                pair_counts[p] += n
                where[p].add(w)
                changed.add(p)
            words[w] = merged
        for p in changed:
            if pair_counts[p] > 0:
                heapq.heappush(heap, entry(p))
            else:
                del pair_counts[p]
    return merges


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
