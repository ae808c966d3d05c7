"""Training speed: gpt2lab's training step against ``transformers``, and MFU.

One *step* is what ``gpt2lab.train`` does per optimizer step: forward,
backward, gradient clipping to norm 1, the optimizer's step (the default
recipe's is Muon for the blocks' matrices and AdamW for the rest; the
``gpt2lab`` row uses AdamW alone, like the other side, and ``gpt2lab with
Muon`` shows what Muon adds), zero the gradients.  The
``transformers`` side is the loop a user would write: ``GPT2LMHeadModel``
(same shape, default attention) called with ``labels=``, ``loss.backward()``,
the same clipping, ``torch.optim.AdamW`` with its defaults.  Both see the same
Shakespeare windows.

Each *variant* (``transformers``, gpt2lab's defaults, gpt2lab with one
technique switched off, ...) takes one step in turn, round after round, in one
process, so that the load of a shared machine falls on all of them alike;
figures are medians over the rounds.  Each round also times a large
``torch.mm`` loop in each matmul dtype in use (fp32, and bf16 where gpt2lab's
autocast picks it): the machine's own matmul peak, against which a variant's
MFU is ``flops_per_token * tokens/s / peak of its dtype``.

Peak RSS cannot be split between variants of one process, so each variant
is also run for one step (which allocates the gradients and the AdamW state) in a subprocess of its own (``--rss``).

    python -m benchmarks.train                       # mini and gpt2, ours vs transformers
    python -m benchmarks.train --ablate --preset mini --rounds 5   # what each technique gains
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time

import torch

from gpt2lab.hardware import ThreadChooser, autocast_dtype, physical_cores
from gpt2lab.model import GPT, GPTConfig
from gpt2lab.recipe import TrainConfig, loss_function, make_optimizer

# preset -> (batch, context): mini is the classic demo setting; gpt2 (124M) a small batch to stay short
SETTINGS = {"mini": (32, 256), "gpt2": (4, 128)}

# The step is timed with AdamW on both sides, like for like; Muon (the default recipe's optimizer)
# is a row of its own: a fixed cost per step, about d_model^3 work per weight matrix.
LIKE_FOR_LIKE = dict(optimizer="adamw")

# gpt2lab with one technique switched off (or another setting), against the defaults
ABLATIONS = {
    "plain loss (loss_chunk=0)": dict(loss_chunk=0),
    "loss_chunk=256": dict(loss_chunk=256),
    "loss_chunk=4096": dict(loss_chunk=4096),
    "AdamW loop": dict(adamw="loop"),
    "AdamW foreach": dict(adamw="foreach"),
    "plain attention": dict(fast_attention=False),
    "1 thread": dict(threads=1),
    "fp32 (autocast off)": dict(autocast="off"),
}
ABLATIONS = {name: {**LIKE_FOR_LIKE, **ov} for name, ov in ABLATIONS.items()}
TRANSFORMERS = "transformers"
OURS = "gpt2lab"
MUON = "gpt2lab with Muon"
DEFAULT_VARIANTS = {TRANSFORMERS: None, OURS: LIKE_FOR_LIKE, MUON: {}}


def shakespeare_batch(batch: int, n_ctx: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` random windows of the Shakespeare training tokens: inputs and targets ``(batch, n_ctx)``."""
    from gpt2lab.data import parse_source, prepare_tokens
    from gpt2lab.tokenizer import load_tokenizer
    from gpt2lab.batches import WindowSampler, get_batch

    shards = prepare_tokens(parse_source("shakespeare"), load_tokenizer("gpt2"), progress=False)
    sampler = WindowSampler(len(shards.train), n_ctx, batch, seed)
    return get_batch(shards.train, sampler.next_step()[0], n_ctx, "cpu")


def ours_step(cfg: GPTConfig, overrides: dict):
    """A gpt2lab training step, built with the same functions ``gpt2lab.train`` uses."""
    overrides = dict(overrides)
    fast_attention = overrides.pop("fast_attention", True)
    tcfg = TrainConfig(**overrides)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = GPT(cfg).train()
    model.set_fast_attention(fast_attention)
    optimizer = make_optimizer(model, tcfg)
    loss_fn = loss_function(model, tcfg, device)

    def step(x, y) -> float:
        loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    dtype = autocast_dtype(device, tcfg.autocast) or torch.float32  # what its matmuls compute in
    return step, tcfg.threads or physical_cores(), model.flops_per_token(), dtype


def transformers_step(cfg: GPTConfig):
    """The same model and step written with ``transformers``, as a user would."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt2lab.checkpoint import hf_config

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**hf_config(cfg))).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def step(x, y) -> float:
        # HF shifts the labels itself: feeding the window with its next token appended
        # would exceed n_ctx, so it predicts x[1:] from x[:-1] -- the same compute.
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step, physical_cores(), None, torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")  # torch.bfloat16 -> bfloat16


def make_step(name: str, cfg: GPTConfig, overrides: dict | None):
    return transformers_step(cfg) if name == TRANSFORMERS else ours_step(cfg, overrides or {})


def matmul_peak(n: int = 1536, seconds: float = 0.5, dtype=torch.float32) -> float:
    """FLOP/s of a large square ``torch.mm`` loop: what this machine's matmul can do now."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    c = torch.mm(a, b)  # warm up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b, out=c)
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - start)


def peak_rss(preset: str, batch: int, variant: str, overrides: dict | None, steps: int = 1) -> float:
    """Peak RSS (MiB) of a fresh process taking ``steps`` steps of one variant."""
    spec = json.dumps({"preset": preset, "batch": batch, "variant": variant, "overrides": overrides or {},
                       "steps": steps})
    out = subprocess.run([sys.executable, "-m", "benchmarks.train", "--rss", spec], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def rss_child(spec: dict) -> None:
    batch, n_ctx = spec["batch"], SETTINGS[spec["preset"]][1]
    cfg = GPTConfig.from_preset(spec["preset"], n_ctx=n_ctx)
    x, y = shakespeare_batch(batch, n_ctx)
    step, threads, _, _ = make_step(spec["variant"], cfg, spec["overrides"])
    torch.set_num_threads(threads)
    for _ in range(spec["steps"]):
        step(x, y)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the (big) parent
    hwm_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"peak_rss_mib": hwm_kib / 1024}))


def run(presets: tuple[str, ...] = tuple(SETTINGS), rounds: int = 3, variants: dict[str, dict | None] | None = None,
        rss: bool = True, batch: int | None = None, log=print, contention: bool = True) -> dict:
    """Every preset of ``presets`` (see :func:`run_preset`), then the contention run."""
    result = {"presets": [run_preset(p, rounds, variants, rss, batch, log) for p in presets]}
    if contention:
        result["contention"] = run_contention(rounds, log=log)
    return result


def run_contention(rounds: int = 3, batch: int = 16, n_ctx: int = 128, d_vocab: int = 4096, log=print) -> dict:
    """Training steps of the default recipe's shape (mini, context 128, 4,096
    tokens, batch 16), quiet and with one core kept busy by a spinning process,
    with every core's thread and with one thread: tokens/s, medians of ``rounds``."""
    from benchmarks import busy_core

    cfg = GPTConfig.from_preset("mini", n_ctx=n_ctx, d_vocab=d_vocab)
    x = torch.randint(0, d_vocab, (batch, n_ctx), generator=torch.Generator().manual_seed(0))
    y = x.roll(-1, dims=1)
    variants = {"chosen at run time (--adapt-threads)": dict(adapt_threads=True),
                f"{physical_cores()} threads": {}, "1 thread": dict(threads=1)}
    steps = {name: ours_step(cfg, ov) for name, ov in variants.items()}
    rates = {}
    for load in ("quiet", "one core busy"):
        times = {name: [] for name in steps}
        choosers = {name: ThreadChooser(steps[name][1]) for name, ov in variants.items() if ov.get("adapt_threads")}
        with busy_core() if load != "quiet" else contextlib.nullcontext():
            for _ in range(rounds + 2):  # the first two rounds warm up (and let the chooser try both counts)
                for name, (step, threads, *_) in steps.items():
                    torch.set_num_threads(threads)
                    t = time.perf_counter()
                    with choosers[name].step() if name in choosers else contextlib.nullcontext():
                        step(x, y)
                    times[name].append(time.perf_counter() - t)
        rates[load] = {name: batch * n_ctx / statistics.median(t[2:]) for name, t in times.items()}
        log(f"  training contention, {load}: " + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in rates[load].items()))
    return {"batch": batch, "n_ctx": n_ctx, "d_vocab": d_vocab, "rounds": rounds, "rates": rates}


def run_preset(preset: str = "mini", rounds: int = 3, variants: dict[str, dict | None] | None = None,
               rss: bool = True, batch: int | None = None, log=print) -> dict:
    """Time each variant ``rounds`` times, alternating, after one warm-up step each.

    ``variants``: name -> TrainConfig overrides for gpt2lab, or ``None`` for
    the ``transformers`` side.  Default: ``transformers`` and gpt2lab's defaults."""
    variants = variants if variants is not None else dict(DEFAULT_VARIANTS)
    batch, n_ctx = batch or SETTINGS[preset][0], SETTINGS[preset][1]
    cfg = GPTConfig.from_preset(preset, n_ctx=n_ctx)
    x, y = shakespeare_batch(batch, n_ctx)
    steps = {name: make_step(name, cfg, ov) for name, ov in variants.items()}
    times = {name: [] for name in variants}
    losses = {name: [] for name in variants}
    peaks = {dtype: [] for *_, dtype in steps.values()}  # the matmul peak of each dtype in use
    for name, (step, threads, *_) in steps.items():  # warm-up (allocations, optimizer state)
        torch.set_num_threads(threads)
        losses[name].append(step(x, y))
    for r in range(rounds):
        torch.set_num_threads(physical_cores())
        for dtype in peaks:
            peaks[dtype].append(matmul_peak(dtype=dtype))
        for name, (step, threads, *_) in steps.items():
            torch.set_num_threads(threads)
            t = time.perf_counter()
            losses[name].append(step(x, y))
            times[name].append(time.perf_counter() - t)
        log(f"  {preset} round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1] * 1e3:.0f} ms" for n in times))
    peak = {dtype: statistics.median(p) for dtype, p in peaks.items()}
    tokens = batch * n_ctx
    base = statistics.median(times[TRANSFORMERS]) if TRANSFORMERS in times else None
    rows = []
    for name, (step, threads, flops_per_token, dtype) in steps.items():
        ms = statistics.median(times[name]) * 1e3
        row = {"preset": preset, "batch": batch, "n_ctx": n_ctx, "variant": name, "threads": threads,
               "dtype": dtype_name(dtype),
               "ms_per_step": round(ms, 1), "tokens_per_s": round(tokens / ms * 1e3, 1),
               "speedup_vs_transformers": round(base * 1e3 / ms, 2) if base else None,
               "ms_per_step_all": [round(t * 1e3, 1) for t in times[name]],
               "loss_first": round(losses[name][0], 5), "loss_last": round(losses[name][-1], 5)}
        if flops_per_token is not None:
            row["mfu"] = round(flops_per_token * tokens / (ms / 1e3) / peak[dtype], 3)  # against its dtype's peak
        if rss:
            row["peak_rss_mib"] = round(peak_rss(preset, batch, name, variants[name]))
        rows.append(row)
    return {"preset": preset, "matmul_peak_gflops": {dtype_name(d): round(p / 1e9, 1) for d, p in peak.items()},
            "matmul_peak_gflops_all": {dtype_name(d): [round(x / 1e9, 1) for x in p] for d, p in peaks.items()},
            "rows": rows}


def table(result: dict) -> str:
    results = result["presets"]
    lines = ["| preset | batch×ctx | variant | matmul dtype | ms/step | tokens/s | × transformers | MFU | peak RSS MiB |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for res in results:
        for r in res["rows"]:
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "–"
            speed = f"{r['speedup_vs_transformers']:.2f}" if r["speedup_vs_transformers"] else "–"
            lines.append(f"| {r['preset']} | {r['batch']}×{r['n_ctx']} | {r['variant']} | {r['dtype']} | {r['ms_per_step']:.0f} | "
                         f"{r['tokens_per_s']:,.0f} | {speed} | {mfu} | {r.get('peak_rss_mib', '–')} |")
    peaks = "; ".join(f"{res['preset']} rounds: " + ", ".join(f"{d} {g} GFLOP/s" for d, g in res["matmul_peak_gflops"].items())
                      for res in results)
    lines.append(f"\nmatmul peak measured alongside ({physical_cores()} threads; MFU is against the peak of the "
                 f"variant's matmul dtype): {peaks}")
    c = result.get("contention")
    if c:
        names = list(c["rates"]["quiet"])
        lines += ["", f"| training, mini {c['batch']}×{c['n_ctx']}, vocab {c['d_vocab']:,} | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        lines += [f"| {load} | " + " | ".join(f"{r[n]:,.0f}" for n in names) + " |" for load, r in c["rates"].items()]
        lines.append("\ntokens/s; one core busy: a spinning process started and stopped by the benchmark.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=list(SETTINGS), action="append", help="default: all")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, help="sequences per step (default: mini 32, gpt2 4)")
    p.add_argument("--ablate", action="store_true", help="gpt2lab with each technique off, against its defaults")
    p.add_argument("--no-rss", action="store_true")
    p.add_argument("--rss", help=argparse.SUPPRESS)  # internal: one variant in a child process
    args = p.parse_args(argv)
    if args.rss:
        return rss_child(json.loads(args.rss))
    variants = dict(DEFAULT_VARIANTS)
    if args.ablate:
        variants.update(ABLATIONS)
    result = run(tuple(args.preset or SETTINGS), args.rounds, variants, rss=not args.no_rss, batch=args.batch)
    print(table(result))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
