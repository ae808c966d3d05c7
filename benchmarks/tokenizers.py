"""Tokenizer measurements on the embedded Shakespeare corpus.

    python -m benchmarks.tokenizers [--sizes 4096 16384] [--repeat 3]

1. Training time of the fast BPE trainer on all the plays, per vocabulary
   size (median of ``--repeat`` runs; pre-tokenization included).
2. Teaching vs fast trainer on one play at a small size (a ratio).
3. Bytes per token of gpt2, a 4,096-token BPE and char on the validation
   plays; the BPE and char vocabularies are built from the training plays.

All on the embedded corpus as ``gpt2lab train`` sees it (``data.py``:
plays normalised to plain text, ``VALIDATION_PLAYS`` held out).
"""

from __future__ import annotations

import argparse
import statistics
import time

from gpt2lab.bpe import BPEConfig, count_chunks, train_merges_fast, train_merges_simple
from gpt2lab.data import VALIDATION_PLAYS, shakespeare_documents
from gpt2lab.tokenizer import CharTokenizer, gpt2_tokenizer, train_bpe


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    texts = list(shakespeare_documents("train"))
    held = "".join(shakespeare_documents("val"))
    print(f"training split: {len(texts)} plays, {sum(len(t.encode()) for t in texts):,} bytes")

    for size in args.sizes:
        times = [timed(lambda: train_bpe(texts, BPEConfig(vocab_size=size)))[1] for _ in range(args.repeat)]
        print(f"fast BPE, vocab {size:6,}: median {statistics.median(times):.2f} s "
              f"(runs: {', '.join(f'{t:.2f}' for t in times)})")

    chunks = count_chunks(texts[:1])
    simple, t_simple = timed(lambda: train_merges_simple(chunks, 512))
    fast, t_fast = timed(lambda: train_merges_fast(chunks, 512))
    print(f"one play, vocab 512: simple {t_simple:.2f} s, fast {t_fast:.3f} s "
          f"({t_simple / t_fast:.0f}x), same merges: {simple == fast}")

    n_bytes = len(held.encode())
    tokenizers = {"gpt2": gpt2_tokenizer(), "bpe-4096": train_bpe(texts, BPEConfig(vocab_size=4096)),
                  "char": CharTokenizer.from_texts(texts)}
    print(f"validation plays ({', '.join(VALIDATION_PLAYS)}): {n_bytes:,} bytes")
    for name, tok in tokenizers.items():
        n = len(tok.encode(held))
        print(f"  {name:9s} n_vocab {tok.n_vocab:6,}  {n:9,} tokens  {n_bytes / n:.3f} bytes/token")


if __name__ == "__main__":
    main()
