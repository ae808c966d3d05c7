"""What reproducible training costs: training tokens/s, side by side, of
``W_E[tokens]`` (the token embedding by indexing, whose gradient adds with
atomics in an order that varies run to run: the code before the fix),
``F.embedding`` (the default now: the same bits every run), and
``F.embedding`` under ``--deterministic`` (``torch.use_deterministic_algorithms``).

``python -m benchmarks.determinism --rounds 6``: the default recipe's step
(``mini`` with a 128-token context, a 4,096-token vocabulary, batch 16, the
default autocast, loss chunk and AdamW), the two variants taking turns
(A B C, B C A, C A B, ...) in one process; medians over the rounds and their ratio.
The batch is Shakespeare's GPT-2 token ids folded into 4,096 (``id % 4096``),
to keep real text's repeated tokens."""

import argparse
import statistics
import time

import torch

from benchmarks.train import ours_step, shakespeare_batch
from gpt2lab.model import Embed, GPTConfig

# name: (the embedding's forward, deterministic algorithms)
VARIANTS = {"indexing": (Embed.forward_plain, False), "F.embedding": (Embed.forward, False),
            "--deterministic": (Embed.forward, True)}


def run(rounds: int = 6, steps: int = 5, batch: int = 16, log=print) -> dict:
    cfg = GPTConfig.from_preset("mini", n_ctx=128, d_vocab=4096)
    x, y = shakespeare_batch(batch, cfg.n_ctx)
    x, y = x % cfg.d_vocab, y % cfg.d_vocab
    step, threads, _, dtype = ours_step(cfg, {})
    forward = Embed.forward
    tok_s = {name: [] for name in VARIANTS}
    tok_cpu_s = {name: [] for name in VARIANTS}  # steadier than wall-clock time on a shared machine
    try:
        step(x, y)  # the first step allocates the gradients and the AdamW state
        for r in range(rounds):
            names = list(VARIANTS)[r % len(VARIANTS):] + list(VARIANTS)[:r % len(VARIANTS)]  # each goes first in turn
            for name in names:
                variant, deterministic = VARIANTS[name]
                Embed.forward = variant
                torch.use_deterministic_algorithms(deterministic)
                start, cpu_start = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    step(x, y)
                tok_s[name].append(steps * x.numel() / (time.perf_counter() - start))
                tok_cpu_s[name].append(steps * x.numel() / (time.process_time() - cpu_start))
            log(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:,.0f} tok/s ({tok_cpu_s[n][-1]:,.0f} per CPU-second)"
                                               for n, v in tok_s.items()))
    finally:
        Embed.forward = forward
        torch.use_deterministic_algorithms(False)
    for what, figures in (("tokens/s", tok_s), ("tokens per CPU-second", tok_cpu_s)):
        median = {n: statistics.median(v) for n, v in figures.items()}
        log(f"median {what} over {rounds} rounds ({threads} threads, matmuls in {dtype}): "
            + ", ".join(f"{n} {m:,.0f}" for n, m in median.items()))
        for name, base in (("F.embedding", "indexing"), ("--deterministic", "F.embedding")):
            ratios = [b / a for a, b in zip(figures[base], figures[name])]
            log(f"  {name} / {base}: ratio of medians {median[name] / median[base]:.3f}, per round "
                + ", ".join(f"{q:.2f}" for q in ratios))
    return {"tokens_per_sec": tok_s, "tokens_per_cpu_sec": tok_cpu_s, "threads": threads, "dtype": str(dtype)}


def embedding_backward(rounds: int = 30, batch: int = 16, log=print) -> dict:
    """Milliseconds of the token embedding's forward + backward alone, at the
    default recipe's shape (batch 16 x 128 tokens, 4,096 x 256), both ways in turn."""
    cfg = GPTConfig.from_preset("mini", n_ctx=128, d_vocab=4096)
    x, _ = shakespeare_batch(batch, cfg.n_ctx)
    embed = Embed(cfg)
    upstream = torch.randn(*x.shape, cfg.d_model)
    ms = {"indexing": [], "F.embedding": []}
    for r in range(rounds):
        for name in (list(ms) if r % 2 == 0 else list(ms)[::-1]):
            forward = embed.forward_plain if name == "indexing" else embed.forward
            embed.W_E.grad = None
            start = time.perf_counter()
            forward(x % cfg.d_vocab).backward(upstream)
            ms[name].append((time.perf_counter() - start) * 1e3)
    median = {n: statistics.median(v) for n, v in ms.items()}
    log(f"embedding forward + backward, median of {rounds}: indexing {median['indexing']:.2f} ms, "
        f"F.embedding {median['F.embedding']:.2f} ms (ratio {median['F.embedding'] / median['indexing']:.2f})")
    return median


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.determinism", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=5, help="training steps per variant per round")
    args = p.parse_args(argv)
    embedding_backward()
    run(args.rounds, args.steps)


if __name__ == "__main__":
    main()
