"""Generation speed: against Hugging Face ``generate`` and against the memory roofline.

Both models hold the same random weights (ours exported with
``checkpoint.gpt2lab_to_hf``).  Each run is greedy, ``new_tokens`` new tokens
after a ``prompt_len``-token random prompt, no stopping at <|endoftext|>, so
both produce exactly the same number of tokens -- and, being greedy on the
same weights, the same tokens, which is checked.  Runs alternate A/B in one
process so that machine load hits both alike; the median of the repeats is
reported.  The context is widened to prompt + new tokens where the preset's
is shorter, since ``transformers`` cannot go past it.  Timed: prompt prefill
+ all new tokens (ids only, no text decoding).

**Roofline.**  At batch 1 a step reads every weight once (the tied
embedding once, as the unembedding) and does little else, so its bound is
memory bandwidth / the weights' bytes tokens per second.  The bandwidth is
measured in every round: the best of a few sums over a 512 MiB tensor (far
larger than any cache), all threads.  At batch B the weights are read once
for B tokens, so the memory bound is B times higher, and the compute bound
(the ``torch.mm`` peak of the weights' dtype / 2 FLOPs per weight per token)
may come first: the fraction is of whichever bound is lower.

**bf16** (``--dtype bf16``): the same model with bf16 weights.  How often it
picks fp32's token is measured step by step on fp32's own text (see
:func:`forced_agreement`), with the step where the two free-running greedy
outputs first part.  Random weights have many near-ties; measure a trained
model with ``--model RUN``.

**Contention** (``--contention``, and in ``python -m benchmarks``): the
default run's model shape (mini, 4,096-token vocabulary), quiet and then
with a spinning process keeping one core busy, each time with the thread
count chosen at run time (the default), all threads fixed, and one thread.

    python -m benchmarks generate                       # mini and gpt2, batch 1 and 8
    python -m benchmarks generate --preset mini --batch 1
    python -m benchmarks generate --contention-only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch

from benchmarks import busy_core
from benchmarks.train import matmul_peak
from gpt2lab.checkpoint import gpt2lab_to_hf, hf_config
from gpt2lab.generate import SamplingConfig, generate_ids, model_in_dtype
from gpt2lab.hardware import ThreadChooser
from gpt2lab.model import GPT, GPTConfig


# The random weights' std.  With GPT-2's 0.02 the logits are nearly flat and greedy repeats one
# token, an empty check.  With 0.4 or more, 12 layers amplify float rounding until logits move by a
# few tenths (gpt2 at 0.4: 0.25 between gpt2lab and transformers on one full forward, at a logit
# scale of 46), so any two correct implementations part at the first near-tie: transformers'
# own cached and uncached greedy paths then disagree with each other.  0.2 gives varied tokens
# (about 150 to 200 distinct in 256) without that chaos.
INIT_RANGE = 0.2


def hf_twin(model: GPT):
    """A ``transformers`` GPT2LMHeadModel holding ``model``'s weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(**hf_config(model.cfg))).eval()
    missing, unexpected = hf.load_state_dict(gpt2lab_to_hf(model), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.tie_weights()
    return hf


def memory_bandwidth(mib: int = 512, tries: int = 3) -> float:
    """Bytes per second read from memory: the best of ``tries`` sums over a ``mib`` MiB tensor."""
    x = torch.ones(mib * 2**20 // 4)
    best = min(timed(x.sum)[1] for _ in range(tries))
    return x.numel() * 4 / best


def weight_bytes(model: GPT) -> int:
    """Bytes a batch-1 step reads: every weight once (positions: one row, left out)."""
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters() if name != "pos_embed.W_pos")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def greedy(model: GPT, prompt: torch.Tensor, new_tokens: int, threads: ThreadChooser | None = None) -> torch.Tensor:
    cfg = SamplingConfig(max_new_tokens=new_tokens, greedy=True, stop_at_eot=False)
    return torch.stack(list(generate_ids(model, prompt.tolist(), cfg, pad_id=0, threads=threads)), dim=1)


@torch.inference_mode()
def forced_agreement(model: GPT, prompt: torch.Tensor, tokens: torch.Tensor) -> float:
    """The share of fp32's greedy ``tokens`` that ``model`` also ranks first, given the
    same context (the prompt and fp32's tokens before it).  Comparing two free-running
    greedy outputs token by token says little: after their first difference they
    continue different texts.  This compares every step on the same text."""
    context = torch.cat([prompt, tokens[:, :-1]], dim=1)  # (batch, prompt_len + new_tokens - 1)
    picks = model(context)[:, prompt.shape[1] - 1:].argmax(dim=-1)  # (batch, new_tokens)
    return (picks == tokens).float().mean().item()


def first_difference(same: torch.Tensor) -> float:
    """The median row's first step where two greedy outputs differ (their length if never)."""
    steps = [int(row.logical_not().nonzero()[0]) if not row.all() else len(row) for row in same]
    return statistics.median(steps)


def held_out_prompts(tokenizer, batch: int, prompt_len: int) -> torch.Tensor:
    """``batch`` prompts of ``prompt_len`` tokens, from seeded random places in the held-out plays."""
    from gpt2lab.data import shakespeare_documents

    ids = tokenizer.encode("\n".join(shakespeare_documents("val")))
    starts = torch.randint(0, len(ids) - prompt_len, (batch,), generator=torch.Generator().manual_seed(0))
    return torch.tensor([ids[s:s + prompt_len] for s in starts.tolist()])  # (batch, prompt_len)


def run(presets: tuple[str, ...] = ("mini", "gpt2"), batches: tuple[int, ...] = (1,), log=print,
        contention: bool = True, **settings) -> dict:
    """Every (preset, batch) of the grid (see :func:`run_one`), then the contention run."""
    runs = []
    for preset in presets:
        for batch in batches:
            runs.append(run_one(preset, batch, **settings))
            r = runs[-1]
            log(f"  {preset} batch {batch}: gpt2lab {r['rate']['gpt2lab']:.1f} tok/s "
                f"({r['roofline_fraction']['gpt2lab']:.0%} of roofline), bf16 {r['rate']['gpt2lab bf16']:.1f} "
                f"({r['roofline_fraction']['gpt2lab bf16']:.0%}), transformers {r['rate']['transformers']:.1f}, "
                f"same tokens: {r['same_tokens']}; bf16 picks fp32's token at {r['bf16_forced_agreement']:.1%} "
                f"of steps, parts at step {r['bf16_first_difference']:g}")
    result = {"runs": runs}
    if contention:
        result["contention"] = run_contention(new_tokens=settings.get("new_tokens", 256),
                                              repeats=settings.get("repeats", 3), log=log)
    return result


def run_one(preset: str = "mini", batch: int = 1, new_tokens: int = 256, prompt_len: int = 16,
            repeats: int = 3, threads: int | None = None, model_path: str | None = None,
            bandwidth_mib: int = 512) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    if model_path:
        from gpt2lab.checkpoint import load_model

        model, tokenizer = load_model(model_path)
        preset = model_path
        new_tokens = min(new_tokens, model.cfg.n_ctx - prompt_len)  # transformers stops at n_ctx
        prompt = held_out_prompts(tokenizer, batch, prompt_len)
    else:
        cfg = GPTConfig.from_preset(preset)
        # HF cannot go past n_ctx (we would slide the window), so the context is
        # widened when prompt + new tokens do not fit (mini: 256 -> 272).
        n_ctx = max(cfg.n_ctx, prompt_len + new_tokens)
        model = GPT(GPTConfig.from_preset(preset, n_ctx=n_ctx, init_range=INIT_RANGE)).eval()
        prompt = torch.randint(0, model.cfg.d_vocab, (batch, prompt_len))
    n_ctx = model.cfg.n_ctx
    bf16 = model_in_dtype(model, "bf16")
    hf = hf_twin(model)

    @torch.inference_mode()
    def theirs() -> torch.Tensor:
        out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                          do_sample=False, eos_token_id=None, pad_token_id=0)
        return out[:, prompt_len:]

    x = torch.randn(batch, model.cfg.d_model)

    @torch.inference_mode()
    def unembed_only() -> None:
        """gpt2lab's output layer alone, one ``(d_model, d_vocab)`` product per new
        token: how much of a step is the unembedding (most of it, on ``mini``)."""
        for _ in range(new_tokens):
            model.unembed(x)

    variants = {"gpt2lab": lambda: greedy(model, prompt, new_tokens),
                "gpt2lab bf16": lambda: greedy(bf16, prompt, new_tokens),
                "transformers": theirs, "unembed": unembed_only}
    times = {name: [] for name in variants}
    bandwidth, peaks, outputs = [], {"fp32": [], "bf16": []}, {}
    for _ in range(repeats):
        bandwidth.append(memory_bandwidth(bandwidth_mib))
        if batch > 1:
            peaks["fp32"].append(matmul_peak(seconds=0.3, dtype=torch.float32))
            peaks["bf16"].append(matmul_peak(seconds=0.3, dtype=torch.bfloat16))
        for name, fn in variants.items():
            outputs[name], seconds = timed(fn)
            times[name].append(seconds)
    rate = {k: batch * new_tokens / statistics.median(v) for k, v in times.items()}
    bw = statistics.median(bandwidth)
    bounds = {}
    for name, m, dtype in (("gpt2lab", model, "fp32"), ("transformers", model, "fp32"), ("gpt2lab bf16", bf16, "bf16")):
        memory = batch * bw / weight_bytes(m)
        compute = statistics.median(peaks[dtype]) / (2 * weight_bytes(m) / m.embed.W_E.element_size()) if batch > 1 else None
        bounds[name] = {"memory": memory, "compute": compute, "bound": min(memory, compute or memory)}
    same = outputs["gpt2lab"] == outputs["gpt2lab bf16"]
    forced = forced_agreement(bf16, prompt, outputs["gpt2lab"])
    return {"preset": preset, "n_ctx": n_ctx, "batch": batch, "new_tokens": new_tokens, "prompt_len": prompt_len,
            "repeats": repeats, "threads": torch.get_num_threads(), "rate": rate,
            "speedup": rate["gpt2lab"] / rate["transformers"],
            "bandwidth_GBps": bw / 1e9, "weights_MB": {"fp32": weight_bytes(model) / 1e6, "bf16": weight_bytes(bf16) / 1e6},
            "bounds": bounds, "roofline_fraction": {k: rate[k] / b["bound"] for k, b in bounds.items()},
            "same_tokens": bool(torch.equal(outputs["gpt2lab"], outputs["transformers"])),
            "bf16_same_sequence_fraction": same.all(dim=1).float().mean().item(),
            "bf16_first_difference": first_difference(same), "bf16_forced_agreement": forced,
            "distinct_tokens": len(set(outputs["gpt2lab"].flatten().tolist())),
            "seconds": times}


def run_contention(preset: str = "mini", d_vocab: int = 4096, new_tokens: int = 256, repeats: int = 3,
                   log=print) -> dict:
    """Tokens/s of the default run's model shape, quiet and with one core kept
    busy, with the thread count chosen at run time, all threads fixed, one thread."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(preset, d_vocab=d_vocab)).eval()
    prompt = torch.randint(0, d_vocab, (1, 16))
    most = torch.get_num_threads()
    choices = {"chosen at run time": lambda: ThreadChooser(most),
               f"{most} threads fixed": lambda: ThreadChooser(most, adapt=False),
               "1 thread": lambda: ThreadChooser(1)}
    rates = {}
    for load in ("quiet", "one core busy"):
        times = {name: [] for name in choices}
        with busy_core() if load != "quiet" else contextlib.nullcontext():
            for _ in range(repeats):
                for name, chooser in choices.items():
                    times[name].append(timed(lambda: greedy(model, prompt, new_tokens, chooser()))[1])
        rates[load] = {name: new_tokens / statistics.median(t) for name, t in times.items()}
        log(f"  contention, {load}: " + ", ".join(f"{k} {v:.0f} tok/s" for k, v in rates[load].items()))
    return {"preset": preset, "d_vocab": d_vocab, "new_tokens": new_tokens, "repeats": repeats, "rates": rates}


def table(result: dict) -> str:
    lines = ["| preset | batch | variant | tokens/s | bound tokens/s | of bound | × transformers | same tokens |",
             "|---|---:|---|---:|---:|---:|---:|---|"]
    for r in result["runs"]:
        for name in ("gpt2lab", "gpt2lab bf16", "transformers"):
            b = r["bounds"][name]
            kind = "memory" if b["bound"] == b["memory"] else "compute"
            same = {"gpt2lab": r["same_tokens"], "transformers": "",
                    "gpt2lab bf16": f"fp32's pick at {r['bf16_forced_agreement']:.1%} of steps"}[name]
            lines.append(f"| {r['preset']} | {r['batch']} | {name} | {r['rate'][name]:,.1f} | {b['bound']:,.0f} ({kind}) | "
                         f"{r['roofline_fraction'][name]:.0%} | {r['rate'][name] / r['rate']['transformers']:.2f} | {same} |")
    for r in result["runs"][:1]:
        lines.append(f"\ngreedy, {r['new_tokens']} new tokens after a {r['prompt_len']}-token prompt, {r['threads']} threads, "
                     f"median of {r['repeats']} alternating repeats; memory bandwidth "
                     + ", ".join(f"{x['preset']} {x['bandwidth_GBps']:.1f}" for x in result["runs"])
                     + " GB/s (measured alongside); weights "
                     + ", ".join(f"{x['preset']} {x['weights_MB']['fp32']:.0f} MB fp32" for x in result["runs"]) + ".")
    c = result.get("contention")
    if c:
        lines += ["", f"| {c['preset']}, vocab {c['d_vocab']:,}, batch 1 | " + " | ".join(c["rates"]["quiet"]) + " |",
                  "|---|" + "---:|" * len(c["rates"]["quiet"])]
        lines += [f"| {load} | " + " | ".join(f"{v:,.0f}" for v in rates.values()) + " |" for load, rates in c["rates"].items()]
        lines.append(f"\ntokens/s, {c['new_tokens']} greedy tokens, median of {c['repeats']}; "
                     "one core busy: a spinning process started and stopped by the benchmark.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks generate", description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", default=["mini", "gpt2"])
    p.add_argument("--model", default=None, help="a trained run or checkpoint instead of random weights "
                                                 "(prompts then come from the held-out plays)")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-contention", action="store_true", help="skip the run with one core kept busy")
    p.add_argument("--contention-only", action="store_true", help="only the quiet / one-core-busy comparison")
    args = p.parse_args(argv)
    if args.contention_only:
        result = {"runs": [], "contention": run_contention(new_tokens=args.new_tokens, repeats=args.repeats)}
        print(table(result))
        return
    presets = (args.model,) if args.model else tuple(args.preset)
    result = run(presets, tuple(args.batch), contention=not args.no_contention, new_tokens=args.new_tokens,
                 prompt_len=args.prompt_len, repeats=args.repeats, threads=args.threads,
                 model_path=args.model)
    print(table(result))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
