"""OpenAI's completions API over gpt2lab's sampler: the request, the work, the answer.

A request (``POST /v1/completions``) is checked field by field
(:func:`parse_completion`); any fault is an :class:`~gpt2lab.errors.APIError`
naming the field.  The work (:func:`completion_steps`) runs on the server's
model thread: it yields one piece per new token (the text now safe to show,
and its log-probabilities if asked), and :func:`choice_logprobs` shapes
those into OpenAI's ``logprobs`` object::

    {"tokens": [" the", ...], "token_logprobs": [-1.2, ...],
     "top_logprobs": [{" the": -1.2, " a": -2.3}, ...], "text_offset": [0, ...]}

Conventions, as in OpenAI's API:

* ``temperature: 0`` (or ``top_p: 0``) is greedy decoding, exactly what
  ``gpt2lab generate --greedy`` does;
* log-probabilities are the model's own (log-softmax of the raw logits),
  before temperature and filters;
* ``echo: true`` returns the prompt too, with a log-probability for *every*
  prompt token: the first is predicted from ``<|endoftext|>``, as ``gpt2lab
  eval`` scores a text, so their sum is minus eval's total loss.  With
  ``max_tokens: 0`` that is the scoring use case: nothing is generated.

Extensions (accepted by vLLM too): ``top_k`` and ``repetition_penalty``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .errors import APIError
from .evaluate import token_losses
from .generate import Generation, Generator, SamplingConfig

MAX_LOGPROBS = 20  # the most alternatives per token a request may ask for
MAX_STOP = 4  # stop strings per request, as in OpenAI's API

# Fields that OpenAI's completions API defines and that we accept only at
# their neutral value (a client may send them; a real value would be ignored silently otherwise).
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "suffix": None}


@dataclass
class CompletionRequest:
    prompts: list[str]
    prompt_ids: list[list[int]]
    sampling: SamplingConfig | None  # None: max_tokens 0, nothing to generate
    n: int = 1
    logprobs: int | None = None
    echo: bool = False
    stream: bool = False
    include_usage: bool = False
    model: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Checking the request, field by field
# ---------------------------------------------------------------------------


def bad(param: str | None, message: str) -> APIError:
    return APIError(400, message, param=param)


def json_type(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def integer(body: dict, name: str, default, lo: int, hi: int):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(name, f"'{name}' must be an integer, got {json_type(value)}")
    if not lo <= value <= hi:
        raise bad(name, f"'{name}' must be between {lo} and {hi}, got {value}")
    return value


def number(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(name, f"'{name}' must be a number, got {json_type(value)}")
    if not lo <= value <= hi:
        raise bad(name, f"'{name}' must be between {lo} and {hi}, got {value}")
    return float(value)


def boolean(body: dict, name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(name, f"'{name}' must be true or false, got {json_type(value)}")
    return value


def string_list(body: dict, name: str, most: int, default: list[str]) -> list[str]:
    """A string or a list of strings (as ``prompt`` and ``stop`` are)."""
    value = body.get(name)
    if value is None:
        return default
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise bad(name, f"'{name}' must be a string or an array of strings, got {json_type(value)}")
    if not 1 <= len(items) <= most:
        raise bad(name, f"'{name}' must hold 1 to {most} strings, got {len(items)}")
    return items


KNOWN = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream",
         "stream_options", "logprobs", "echo", "repetition_penalty", "best_of", "user", *NEUTRAL}


def parse_completion(body, generator: Generator, limits) -> CompletionRequest:
    """Check a completions request against the API and the server's ``limits``."""
    if not isinstance(body, dict):
        raise bad(None, f"the request body must be a JSON object, got {json_type(body)}")
    for name in body:
        if name not in KNOWN:
            raise bad(name, f"unknown field '{name}'; see the README for the fields /v1/completions accepts")
    for name, neutral in NEUTRAL.items():
        if body.get(name) not in (None, neutral):
            raise bad(name, f"'{name}' is not supported by this server; leave it out")
    if not isinstance(body.get("model", ""), str):
        raise bad("model", f"'model' must be a string, got {json_type(body['model'])}")
    if not isinstance(body.get("user", ""), str):
        raise bad("user", f"'user' must be a string, got {json_type(body['user'])}")
    prompts = string_list(body, "prompt", limits.max_rows, [""])
    n = integer(body, "n", 1, 1, limits.max_n)
    if body.get("best_of") not in (None, n):
        raise bad("best_of", "'best_of' is not supported: leave it out or make it equal to 'n'")
    if len(prompts) * n > limits.max_rows:
        raise bad("n", f"{len(prompts)} prompts x n={n} is {len(prompts) * n} completions; this server "
                       f"makes at most {limits.max_rows} per request (--max-rows)")
    prompt_ids = [prompt_tokens(generator, p, i if len(prompts) > 1 else None) for i, p in enumerate(prompts)]
    request = CompletionRequest(prompts, prompt_ids, None, n, integer(body, "logprobs", None, 0, MAX_LOGPROBS),
                                boolean(body, "echo"), boolean(body, "stream"), stream_usage(body),
                                body.get("model") or "")
    max_tokens = integer(body, "max_tokens", 16, 0, limits.max_tokens)
    temperature = number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = number(body, "top_p", 1.0, 0.0, 1.0)
    top_k = integer(body, "top_k", None, -1, 1 << 30)
    sampling = dict(temperature=temperature or 1.0, greedy=temperature == 0 or top_p == 0, top_p=top_p or 1.0,
                    top_k=top_k if top_k and top_k > 0 else None, num_samples=n,
                    repetition_penalty=number(body, "repetition_penalty", 1.0, 0.01, 100.0),
                    seed=integer(body, "seed", None, -(1 << 63), (1 << 63) - 1),
                    stop=tuple(string_list(body, "stop", MAX_STOP, [])))
    if any(not s for s in sampling["stop"]):
        raise bad("stop", "'stop' strings must not be empty")
    if max_tokens > 0:
        request.sampling = SamplingConfig(max_new_tokens=max_tokens, dtype=limits.dtype, **sampling)
    return request


def prompt_tokens(generator: Generator, prompt: str, index: int | None) -> list[int]:
    ids = generator.tokenizer.encode(prompt)
    n_ctx = generator.model.cfg.n_ctx
    if len(ids) > n_ctx:
        which = "'prompt'" if index is None else f"prompt {index}"
        raise bad("prompt", f"{which} is {len(ids)} tokens; this model's context is {n_ctx} tokens: shorten it")
    return ids


def stream_usage(body: dict) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise bad("stream_options", "'stream_options' must be an object like {\"include_usage\": true}")
    return boolean(options, "include_usage")


# ---------------------------------------------------------------------------
# The work, on the model thread
# ---------------------------------------------------------------------------


@dataclass
class Piece:
    """New text for one choice, with the log-probabilities of its tokens."""

    index: int  # the choice (prompt-major: prompt i, sample j is i * n + j)
    text: str
    tokens: list[int]
    logprobs: list[float]
    top: list[dict[int, float]] | None  # per token: the most likely ids and their log-probabilities


def top_logprobs(logprobs: torch.Tensor, k: int) -> dict[int, float]:
    values, ids = logprobs.topk(k)
    return dict(zip(ids.tolist(), values.tolist()))


def echo_pieces(generator: Generator, request: CompletionRequest) -> list[Piece]:
    """The prompts as pieces, scored as ``gpt2lab eval`` scores a text."""
    pieces, k = [], request.logprobs or 0
    eot = generator.tokenizer.eot_token
    for i, ids in enumerate(request.prompt_ids):
        losses, probs, top_ids = token_losses(generator.model, ids, eot, k) if ids else (torch.zeros(0), None, None)
        top = [dict(zip(top_ids[j].tolist(), probs[j].log().tolist())) for j in range(len(ids))] if k else None
        for j in range(request.n):
            pieces.append(Piece(i * request.n + j, request.prompts[i], list(ids), (-losses).tolist(), top))
    return pieces


def completion_steps(generator: Generator, request: CompletionRequest) -> Iterator[list[Piece]]:
    """Yield the pieces of each step; return the :class:`Generation` of each
    choice (None each when nothing is generated)."""
    if request.echo:
        yield echo_pieces(generator, request)
    if request.sampling is None:
        return [None] * (len(request.prompts) * request.n)
    events = generator.token_events(request.prompts, request.sampling)
    while True:
        try:
            event = next(events)
        except StopIteration as done:
            return done.value
        if event.token is None:
            yield [Piece(event.row, event.text, [], [], None)]
            continue
        logprobs = event.logits.float().log_softmax(dim=-1)
        top = [top_logprobs(logprobs, request.logprobs)] if request.logprobs else None
        yield [Piece(event.row, event.text, [event.token], [logprobs[event.token].item()], top)]


# ---------------------------------------------------------------------------
# The answer, in OpenAI's shapes
# ---------------------------------------------------------------------------


def finish_reason(generation: Generation | None) -> str:
    return "length" if generation is None or generation.finish_reason == "length" else "stop"


def choice_logprobs(generator: Generator, pieces: list[Piece], offset: int) -> dict:
    """OpenAI's ``logprobs`` object for the tokens of ``pieces``; text offsets start at ``offset``."""
    decode = generator.tokenizer.decode
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for piece in pieces:
        for j, (t, lp) in enumerate(zip(piece.tokens, piece.logprobs)):
            out["tokens"].append(decode([t]))
            out["token_logprobs"].append(lp)
            out["top_logprobs"].append({decode([i]): v for i, v in piece.top[j].items()} if piece.top else None)
            out["text_offset"].append(offset)
            offset += len(decode([t]))
    if not any(out["top_logprobs"]):
        out["top_logprobs"] = None
    return out


def usage(request: CompletionRequest, generations: list) -> dict:
    prompt = sum(len(ids) for ids in request.prompt_ids) * request.n
    completion = sum(len(g.tokens) for g in generations if g is not None)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
