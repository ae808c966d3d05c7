"""Corpus preparation speed: gpt2lab's shard writer against raw ``tiktoken``.

Both encode the same documents (the Shakespeare plays, already read and
normalised): gpt2lab through the shard writer of ``gpt2lab.data`` (batched
``encode_batch``, an ``<|endoftext|>`` after each document, ``uint16`` ids
written to a file), ``tiktoken`` through ``encode_ordinary_batch`` into
Python lists, and nothing else.  They alternate in one process; MB/s is UTF-8
megabytes of text per second, median of the rounds.

    python -m benchmarks.shards --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


class _NoBar:
    def update(self, n):
        pass


def run(rounds: int = 9, log=print) -> dict:
    from gpt2lab.data import _write_documents, iter_pieces, parse_source, token_dtype
    from gpt2lab.tokenizer import load_tokenizer

    tok = load_tokenizer("gpt2")
    source = parse_source("shakespeare")
    pieces = list(iter_pieces(source, "train")) + list(iter_pieces(source, "val"))  # (text, ends_document)
    docs = [text for text, _ in pieces]
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    times = {"gpt2lab": [], "tiktoken": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.bin"

        def ours():
            with open(path, "wb") as f:
                _write_documents(f, tok, pieces, token_dtype(tok.n_vocab), _NoBar())

        def raw():
            tok.enc.encode_ordinary_batch(docs)

        for r in range(rounds + 1):  # the first round warms up
            for name, fn in (("gpt2lab", ours), ("tiktoken", raw)):
                t = time.perf_counter()
                fn()
                if r:
                    times[name].append(time.perf_counter() - t)
            if r:
                log(f"  shards round {r}/{rounds}: " + ", ".join(f"{n} {v[-1]:.2f} s" for n, v in times.items()))
    speed = {n: mb / statistics.median(v) for n, v in times.items()}
    return {"mb": round(mb, 2), "gpt2lab_mb_s": round(speed["gpt2lab"], 2),
            "tiktoken_mb_s": round(speed["tiktoken"], 2), "ratio": round(speed["gpt2lab"] / speed["tiktoken"], 2),
            "seconds_all": {n: [round(t, 3) for t in v] for n, v in times.items()}}


def table(r: dict) -> str:
    return ("| corpus preparation | MB/s | × tiktoken |\n|---|---:|---:|\n"
            f"| gpt2lab shard writer | {r['gpt2lab_mb_s']:.2f} | {r['ratio']:.2f} |\n"
            f"| tiktoken encode_ordinary_batch | {r['tiktoken_mb_s']:.2f} | 1.00 |\n"
            f"\n{r['mb']:.1f} MB of Shakespeare, median of {len(r['seconds_all']['gpt2lab'])} alternating rounds")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shards", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=9)
    r = run(p.parse_args(argv).rounds)
    print(table(r))
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
