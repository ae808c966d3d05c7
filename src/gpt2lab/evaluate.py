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
def token_losses(model: GPT, ids: list[int], eot_token: int, top_k: int = 0):
    """The loss in nats of every token of ``ids``, ``<|endoftext|>`` prepended
    so that even the first token is predicted; texts longer than the context
    are scored in sliding :func:`windows`.

    Returns ``(losses, top_probs, top_ids)``: ``losses`` is ``(n,)``; with
    ``top_k > 0``, row ``i`` of ``top_probs``/``top_ids`` (``(n, top_k)``,
    most likely first) holds the model's best guesses for token ``i``, made
    before seeing it; otherwise both are ``None``."""
    seq = torch.tensor([eot_token] + list(ids), dtype=torch.long)
    inputs, targets = seq[:-1], seq[1:]
    device = next(model.parameters()).device
    losses, probs, top_ids = [], [], []
    for start, end, first in windows(len(targets), model.cfg.n_ctx):
        logits = model(inputs[start:end][None].to(device))[0].float()  # (pos, d_vocab)
        logits = logits[first - start:end - start]  # the positions this window scores
        losses.append(F.cross_entropy(logits, targets[first:end].to(device), reduction="none").cpu())
        if top_k > 0:
            p, i = logits.softmax(dim=-1).topk(top_k, dim=-1)  # (pos, top_k), sorted
            probs.append(p.cpu())
            top_ids.append(i.cpu())
    if top_k > 0:
        return torch.cat(losses), torch.cat(probs), torch.cat(top_ids)
    return torch.cat(losses), None, None


def score_tokens(model: GPT, ids: list[int], eot_token: int) -> float:
    """Total loss in nats of every token of ``ids`` (see :func:`token_losses`)."""
    return token_losses(model, ids, eot_token)[0].double().sum().item()


@dataclass
class TokenView:
    """One position of :func:`inspect_text`: the token, how surprised the
    model was by it, and what it expected there instead."""
    token: str
    id: int
    loss: float  # nats
    top: list[tuple[str, float]]  # (token, probability), most likely first

    def to_dict(self) -> dict:
        return dict(token=self.token, id=self.id, loss=self.loss,
                    top=[{"token": t, "prob": p} for t, p in self.top])


def inspect_text(model: GPT, tokenizer: Tokenizer, text: str, top_k: int = 5) -> list[TokenView]:
    """Per token of ``text``: its loss and the model's ``top_k`` predictions for it."""
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the text is empty: nothing to inspect")
    top_k = min(top_k, model.cfg.d_vocab)
    losses, probs, top_ids = token_losses(model, ids, tokenizer.eot_token, top_k)
    return [TokenView(tokenizer.decode([t]), t, float(losses[i]),
                      [(tokenizer.decode([int(j)]), float(p)) for j, p in zip(top_ids[i], probs[i])])
            for i, t in enumerate(ids)]


def score_text(model: GPT, tokenizer: Tokenizer, text: str) -> Score:
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the text is empty: nothing to score")
    total = score_tokens(model, ids, tokenizer.eot_token)
    n_bytes = len(text.encode("utf-8"))
    loss = total / len(ids)
    return Score(loss=loss, perplexity=math.exp(min(loss, 700.0)), bits_per_byte=bits_per_byte(total, n_bytes),
                 tokens=len(ids), bytes=n_bytes)


def attention_patterns(model: GPT, tokenizer: Tokenizer, text: str) -> tuple[list[str], torch.Tensor]:
    """Every head's attention pattern on ``text`` (``<|endoftext|>`` first, as
    in training).  Returns the tokens and a ``(layer, head, pos, pos)`` tensor
    whose ``[l, h, i, j]`` is how much position ``i`` attends to ``j``."""
    ids = [tokenizer.eot_token] + tokenizer.encode(text)
    if len(ids) == 1:
        raise ValueError("the text is empty: nothing to look at")
    if len(ids) > model.cfg.n_ctx:
        raise ValueError(f"the text is {len(ids)} tokens with <|endoftext|>, but the model sees at most "
                         f"{model.cfg.n_ctx}; shorten it")
    return [tokenizer.decode([t]) for t in ids], attention_of_ids(model, ids)


def attention_of_ids(model: GPT, ids: list[int], layers: list[int] | None = None) -> torch.Tensor:
    """The attention patterns of ``layers`` (default: all) on the token ids
    ``ids`` (at most ``n_ctx``): a ``(layer, head, pos, pos)`` tensor."""
    layers = list(range(model.cfg.n_layers)) if layers is None else layers
    wanted = [f"blocks.{i}.attn.hook_pattern" for i in layers]
    device = next(model.parameters()).device
    _, cache = model.run_with_cache(torch.tensor([ids], device=device), names=wanted)
    return torch.stack([cache[name][0] for name in wanted]).cpu()  # (layer, head, pos, pos)
