"""Generating text: repeatedly predict the next token, pick one, append it.

This is the minimal version, used by ``gpt2lab train`` to print a sample at
the end of a run: temperature and top-k sampling, no KV cache (the whole
context is re-run for every new token).
"""

from __future__ import annotations

import torch

from .model import GPT


@torch.no_grad()
def sample(model: GPT, prompt: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           generator: torch.Generator | None = None) -> list[int]:
    """Continue ``prompt`` (token ids) by ``max_new_tokens`` sampled tokens; returns only the new ones.

    ``temperature`` < 1 sharpens the distribution, > 1 flattens it, 0 picks
    the most likely token.  ``top_k`` keeps only the k most likely tokens."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seq = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, pos)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(seq[:, -model.cfg.n_ctx:])[0, -1].float()  # (d_vocab,) scores for the next token
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None and 0 < top_k < logits.numel():
                kth = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = logits.softmax(dim=-1)
            nxt = int(torch.multinomial(probs.cpu(), 1, generator=generator))
        out.append(nxt)
        seq = torch.cat([seq, torch.tensor([[nxt]], device=device)], dim=1)
    model.train(was_training)
    return out
