"""Scoring text: how surprised is the model by it?

The loss is the mean negative log-probability (in nats) that the model gave
each actual next token.  Perplexity is ``exp(loss)``.  Both depend on the
tokenizer: a tokenizer with longer tokens has fewer, harder predictions to
make.  **Bits per byte** does not: it is the total information the model
needs to encode the text, in bits, divided by the text's length in UTF-8
bytes, so models with different vocabularies can be compared fairly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .model import GPT
from .tokenizer import Tokenizer


@dataclass
class Score:
    loss: float  # nats per token
    perplexity: float
    bits_per_byte: float
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the text

    def to_dict(self) -> dict:
        return dict(loss=self.loss, perplexity=self.perplexity, bits_per_byte=self.bits_per_byte,
                    tokens=self.tokens, bytes=self.bytes)


def bits_per_byte(total_nats: float, n_bytes: int) -> float:
    """Convert a summed loss in nats into bits per UTF-8 byte of text."""
    return total_nats / math.log(2) / max(n_bytes, 1)


def windows(n_targets: int, n_ctx: int) -> list[tuple[int, int, int]]:
    """Sliding windows over a text longer than the context.

    Returns ``(start, end, first_scored)`` triples over the input positions:
    the window feeds inputs ``[start, end)`` and scores only the targets from
    ``first_scored`` to ``end``.  Every target is scored exactly once, and
    after the first window each one has at least half a context of history."""
    out, scored, history = [], 0, n_ctx // 2
    while scored < n_targets:
        start = max(0, scored - history) if scored else 0
        end = min(start + n_ctx, n_targets)
        out.append((start, end, scored))
        scored = end
    return out


@torch.no_grad()
def score_tokens(model: GPT, ids: list[int], eot_token: int) -> float:
    """Total loss in nats of every token of ``ids``, ``<|endoftext|>`` prepended
    so that even the first token is predicted."""
    seq = torch.tensor([eot_token] + list(ids), dtype=torch.long)
    inputs, targets = seq[:-1], seq[1:]
    device = next(model.parameters()).device
    total = 0.0
    for start, end, first in windows(len(targets), model.cfg.n_ctx):
        logits = model(inputs[start:end][None].to(device))[0].float()  # (pos, d_vocab)
        keep = slice(first - start, end - start)
        total += F.cross_entropy(logits[keep], targets[first:end].to(device), reduction="sum").item()
    return total


def score_text(model: GPT, tokenizer: Tokenizer, text: str) -> Score:
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the text is empty: nothing to score")
    total = score_tokens(model, ids, tokenizer.eot_token)
    n_bytes = len(text.encode("utf-8"))
    loss = total / len(ids)
    return Score(loss=loss, perplexity=math.exp(min(loss, 700.0)), bits_per_byte=bits_per_byte(total, n_bytes),
                 tokens=len(ids), bytes=n_bytes)
