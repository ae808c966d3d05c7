"""Tokenizer training on the embedded Shakespeare corpus.

    python -m benchmarks tokenizers [--sizes 4096 16384] [--repeat 3]

1. What ``gpt2lab tokenizer train --data shakespeare --vocab-size N`` does
   after start-up, step by step (median of ``--repeat`` runs, wall and CPU
   seconds): read and normalise the training plays, cut them into chunks
   and count them, learn the merges (the fast trainer: ``tokenizers``).
2. Teaching vs fast trainer on one play at a small size: a ratio, and
   whether they learned the same merges.
3. Bytes per token of gpt2, the trained BPE and char on the validation
   plays; the BPE and char vocabularies are built from the training plays.

CPU seconds are this process's (all its threads): on a busy machine they
stay close to the quiet wall time, while the wall time grows with the load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from gpt2lab.bpe import GPT2_PATTERN, N_BYTES, count_chunks, ranks_from_merges, train_merges_fast, train_merges_simple
from gpt2lab.data import VALIDATION_PLAYS, iter_documents, parse_source, shakespeare_documents
from gpt2lab.tokenizer import CharTokenizer, TiktokenBPE, gpt2_tokenizer


def timed(fn):
    """``fn()``, its wall seconds and its CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def train_steps(size: int) -> dict:
    """One tokenizer training, as the CLI does it, timed step by step."""
    texts, *read = timed(lambda: list(iter_documents(parse_source("shakespeare"), "train")))
    chunks, *count = timed(lambda: count_chunks(texts, GPT2_PATTERN))
    merges, *learn = timed(lambda: train_merges_fast(chunks, size - 1))
    steps = {"read": read, "count": count, "merges": learn}
    steps["total"] = [sum(s[i] for s in steps.values()) for i in range(2)]
    return {"steps": steps, "n_merges": len(merges)}


def run(sizes: tuple[int, ...] = (4096,), repeat: int = 3, teaching_size: int = 512, log=print) -> dict:
    runs = []
    for size in sizes:
        tries = [train_steps(size) for _ in range(repeat)]
        median = {step: [statistics.median(t["steps"][step][i] for t in tries) for i in range(2)]
                  for step in tries[0]["steps"]}
        runs.append({"vocab_size": size, "repeat": repeat, "median": median, "tries": tries})
        log(f"  vocab {size}: {median['total'][0]:.2f} s wall, {median['total'][1]:.2f} s CPU")

    play = next(shakespeare_documents("train"))
    chunks = count_chunks([play])
    simple, t_simple, _ = timed(lambda: train_merges_simple(chunks, teaching_size))
    fast, t_fast, _ = timed(lambda: train_merges_fast(chunks, teaching_size))
    teaching = {"vocab_size": teaching_size, "simple_s": t_simple, "fast_s": t_fast, "same_merges": simple == fast}
    log(f"  one play, vocab {teaching_size}: teaching {t_simple:.2f} s, fast {t_fast:.3f} s, same merges {simple == fast}")

    texts = list(shakespeare_documents("train"))
    held = "".join(shakespeare_documents("val"))
    bpe = TiktokenBPE("bpe", ranks_from_merges(train_merges_fast(count_chunks(texts), sizes[0] - 1)))
    density = {}
    for name, tok in {"gpt2": gpt2_tokenizer(), f"bpe-{sizes[0]}": bpe, "char": CharTokenizer.from_texts(texts)}.items():
        density[name] = {"n_vocab": tok.n_vocab, "bytes_per_token": len(held.encode()) / len(tok.encode(held))}
    return {"runs": runs, "teaching": teaching, "density": density, "held_out": list(VALIDATION_PLAYS)}


def table(result: dict) -> str:
    lines = ["| vocab | read plays s | chunk counts s | merges s | total s | (CPU s: read, count, merges, total) |",
             "|---:|---:|---:|---:|---:|---|"]
    for r in result["runs"]:
        m = r["median"]
        cpu = ", ".join(f"{m[step][1]:.2f}" for step in ("read", "count", "merges", "total"))
        lines.append(f"| {r['vocab_size']:,} | {m['read'][0]:.2f} | {m['count'][0]:.2f} | {m['merges'][0]:.2f} | "
                     f"{m['total'][0]:.2f} | {cpu} |")
    t = result["teaching"]
    lines.append(f"\nmedian of {result['runs'][0]['repeat']}; start-up (imports) excluded, as in the CLI's own figure.\n"
                 f"One play, vocab {t['vocab_size']}: teaching trainer {t['simple_s']:.2f} s, fast {t['fast_s']:.3f} s "
                 f"({t['simple_s'] / t['fast_s']:.0f}×), same merges: {t['same_merges']}.\n")
    lines += ["| tokenizer | n_vocab | bytes/token (held-out plays) |", "|---|---:|---:|"]
    lines += [f"| {name} | {d['n_vocab']:,} | {d['bytes_per_token']:.3f} |" for name, d in result["density"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks tokenizers", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if min(args.sizes) <= N_BYTES:
        ap.error(f"--sizes: each vocabulary needs more than {N_BYTES} tokens")
    result = run(tuple(args.sizes), args.repeat)
    print(table(result))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
