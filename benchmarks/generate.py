"""Generation speed: gpt2lab's cached loop against Hugging Face ``generate``.

Both models hold the same random weights (ours exported with
``checkpoint.gpt2lab_to_hf``).  Each run is greedy, ``new_tokens`` new tokens
after a ``prompt_len``-token random prompt, no stopping at <|endoftext|>, so
both produce exactly the same number of tokens -- and, being greedy on the
same weights, the same tokens, which is checked.  Runs alternate A/B in one
process so that machine load hits both alike; the median of the repeats is
reported.  The context is widened to prompt + new tokens where the preset's
is shorter, since ``transformers`` cannot go past it.  Timed: prompt prefill + all new tokens (ids only, no text decoding).

    python -m benchmarks.generate                       # mini and gpt2, batch 1 and 8
    python -m benchmarks.generate --preset mini --batch 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from gpt2lab.checkpoint import gpt2lab_to_hf, hf_config
from gpt2lab.generate import SamplingConfig, generate_ids
from gpt2lab.model import GPT, GPTConfig


def hf_twin(model: GPT):
    """A ``transformers`` GPT2LMHeadModel holding ``model``'s weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(**hf_config(model.cfg))).eval()
    missing, unexpected = hf.load_state_dict(gpt2lab_to_hf(model), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.tie_weights()
    return hf


def run(presets: tuple[str, ...] = ("mini", "gpt2"), batches: tuple[int, ...] = (1,), log=print, **settings) -> dict:
    """Every (preset, batch) of the grid: see :func:`run_one`."""
    runs = []
    for preset in presets:
        for batch in batches:
            runs.append(run_one(preset, batch, **settings))
            r = runs[-1]
            log(f"  {preset} batch {batch}: gpt2lab {r['gpt2lab_tokens_per_sec']:.1f} tok/s, "
                f"transformers {r['transformers_tokens_per_sec']:.1f} tok/s, same tokens: {r['same_tokens']}")
    return {"runs": runs}


def table(result: dict) -> str:
    lines = ["| preset | batch | gpt2lab tokens/s | transformers tokens/s | × transformers | same tokens | unembed alone tokens/s |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in result["runs"]:
        lines.append(f"| {r['preset']} | {r['batch']} | {r['gpt2lab_tokens_per_sec']:,.1f} | "
                     f"{r['transformers_tokens_per_sec']:,.1f} | {r['speedup']:.2f} | {r['same_tokens']} | "
                     f"{r['unembed_only_tokens_per_sec']:,.1f} |")
    r = result["runs"][0]
    lines.append(f"\ngreedy, {r['new_tokens']} new tokens after a {r['prompt_len']}-token prompt, fp32, "
                 f"{r['threads']} threads, median of {r['repeats']} alternating repeats")
    return "\n".join(lines)


def run_one(preset: str = "mini", batch: int = 1, new_tokens: int = 256, prompt_len: int = 16,
            repeats: int = 3, threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = GPTConfig.from_preset(preset)
    # HF cannot go past n_ctx (we would slide the window), so the context is
    # widened when prompt + new tokens do not fit (mini: 256 -> 272).
    n_ctx = max(cfg.n_ctx, prompt_len + new_tokens)
    # init_range 1.0: with GPT-2's 0.02 the logits are nearly flat and greedy repeats one token,
    # which would make "same tokens" an empty check.
    model = GPT(GPTConfig.from_preset(preset, n_ctx=n_ctx, init_range=1.0)).eval()
    hf = hf_twin(model)
    prompt = torch.randint(0, model.cfg.d_vocab, (batch, prompt_len))
    cfg = SamplingConfig(max_new_tokens=new_tokens, greedy=True, stop_at_eot=False)

    def ours() -> torch.Tensor:
        return torch.stack(list(generate_ids(model, prompt.tolist(), cfg, pad_id=0)), dim=1)

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

    times = {"gpt2lab": [], "transformers": [], "unembed": []}
    outputs = {}
    for _ in range(repeats):
        for name, fn in (("gpt2lab", ours), ("transformers", theirs), ("unembed", unembed_only)):
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
    rate = {k: batch * new_tokens / statistics.median(v) for k, v in times.items()}
    return {"preset": preset, "n_ctx": n_ctx, "batch": batch, "new_tokens": new_tokens, "prompt_len": prompt_len,
            "repeats": repeats, "threads": torch.get_num_threads(),
            "gpt2lab_tokens_per_sec": rate["gpt2lab"], "transformers_tokens_per_sec": rate["transformers"],
            "speedup": rate["gpt2lab"] / rate["transformers"],
            "unembed_only_tokens_per_sec": rate["unembed"],
            "same_tokens": bool(torch.equal(outputs["gpt2lab"], outputs["transformers"])),
            "distinct_tokens": len(set(outputs["gpt2lab"].flatten().tolist())),
            "seconds": times}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.generate", description=__doc__.splitlines()[0])
    p.add_argument("--preset", nargs="+", default=["mini", "gpt2"])
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    result = run(tuple(args.preset), tuple(args.batch), new_tokens=args.new_tokens, prompt_len=args.prompt_len,
                 repeats=args.repeats, threads=args.threads)
    print(table(result))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
