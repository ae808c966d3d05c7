"""Generating text: one token at a time, fast, with the usual sampling controls.

A language model only ever predicts *one* next token.  Generating text is a
loop around it: run the model, turn the last position's logits into a choice
of token, append that token, repeat.  Three ideas make the loop good:

1. **A KV cache** (:class:`gpt2lab.model.KVCache`).  The naive loop re-runs
   the whole sequence for every new token.  With the cache, the prompt is run
   once (*prefill*) and every later step feeds the model one position.  Only
   the last position's residual goes through the unembedding, since only its
   logits are needed: for a small model the ``(d_model, d_vocab)`` unembed
   is most of the work.
2. **Sampling controls**, applied to the logits in this order (the order
   Hugging Face ``transformers`` and most libraries use):

   a. *repetition penalty* ``r``: the logit of every token seen so far (in
      the prompt or the output) is divided by ``r`` if positive, multiplied by ``r`` if
      negative (so it always becomes less likely for ``r > 1``);
   b. *temperature* ``T``: logits / T.  Small T sharpens the distribution,
      large T flattens it;
   c. *top-k*: keep the ``k`` most likely tokens (ties with the k-th kept);
   d. *top-p* (nucleus): keep the most likely tokens until their probability
      reaches ``p``; the most likely token is always kept;

   then draw from the softmax with a seeded ``torch.Generator``, or, with
   ``greedy``, take the arg-max after the penalty (temperature and the
   filters cannot change the arg-max).
3. **Streaming**: byte-level BPE tokens may end in the middle of a UTF-8
   character (an emoji is often 2-3 tokens), so text is produced by an
   incremental UTF-8 decoder (:class:`TextStream`) that holds incomplete
   bytes back instead of printing a replacement character.

**Batches.**  Prompts of different lengths (and ``num_samples`` copies of
each) run as one batch, *left-padded* so that every row's newest token sits
in the same column.  Each row gets its own positions (its first real token is
position 0) and an attention mask that hides the padding, so a row generates
exactly what it would alone.

**Sliding window.**  GPT-2 has learned positions up to ``n_ctx`` and no more.
When the context is full and another token is needed, we keep the last
``n_ctx // 2`` tokens (the newest included), throw the cache away, re-run
those tokens from position 0 (a new prefill) and carry on.  Halving means a
re-prefill only every ``n_ctx // 2`` tokens instead of every token.  In a
batch the window slides when the *longest* row fills the context, and every
row keeps its last ``n_ctx // 2`` tokens at that moment, so past the context
a short row in a batch can differ from the same prompt run alone.

The uncached path (``use_cache=False``: a full forward over the window at
every step) follows the same window rules, and ``tests/test_generate.py``
proves the two produce the same tokens.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import dataclasses
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .errors import UserError
from .hardware import ThreadChooser, cpu_has_native_bf16
from .model import GPT, KVCache
from .tokenizer import Tokenizer

MAX_NEW_TOKENS = 100_000  # cap on --max-new-tokens
MAX_SAMPLES = 64  # cap on --num-samples (they run as one batch)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # --dtype: the weights' number format


def check_dtype(dtype: str) -> None:
    """``--dtype`` of ``generate`` and ``serve``: one of :data:`DTYPES`, or a one-line error."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


@dataclass
class SamplingConfig:
    """How to choose each next token, and when to stop.  Each field is a flag of
    ``gpt2lab generate`` (``top_k`` is ``--top-k``), and errors name the flag."""

    max_new_tokens: int = 200  # stop after this many new tokens (1 .. 100,000)
    temperature: float = 1.0  # > 0; ignored when greedy
    top_k: int | None = None  # keep only the k most likely tokens (None: all)
    top_p: float = 1.0  # keep the smallest most-likely set with this much probability, in (0, 1]
    repetition_penalty: float = 1.0  # > 0; 1 is off, > 1 discourages tokens of the prompt or output so far
    greedy: bool = False  # always take the most likely token (deterministic)
    num_samples: int = 1  # samples per prompt, run as one batch (1 .. 64)
    seed: int | None = None  # None: a fresh random seed (reported, so a sample can be reproduced)
    stop: tuple[str, ...] = ()  # stop when the new text contains any of these
    stop_at_eot: bool = True  # stop at <|endoftext|>
    dtype: str = "fp32"  # the weights' format while generating: fp32, or bf16 (half the bytes to read per token)

    def __post_init__(self) -> None:
        self.stop = tuple(self.stop)
        check_dtype(self.dtype)
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise UserError(f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS:,}, got {self.max_new_tokens}")
        if not 1 <= self.num_samples <= MAX_SAMPLES:
            raise UserError(f"--num-samples must be between 1 and {MAX_SAMPLES}, got {self.num_samples}")
        if not self.greedy and not self.temperature > 0:
            raise UserError(f"--temperature must be > 0, got {self.temperature}; use --greedy for deterministic output")
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {self.top_k}; leave it unset to keep every token")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}; 1 keeps every token")
        if not self.repetition_penalty > 0:
            raise UserError(f"--repetition-penalty must be > 0, got {self.repetition_penalty}; 1 turns it off")
        if any(not s for s in self.stop):
            raise UserError("--stop strings must not be empty")


@dataclass
class Generation:
    """One generated sample."""

    text: str  # the new text, without the prompt and without the stop string
    tokens: list[int]  # the new token ids (the <|endoftext|> that stopped it excluded)
    finish_reason: str  # "eot", "stop" (a stop string) or "length" (max_new_tokens)
    seed: int  # the seed that reproduces it


@dataclass
class TokenEvent:
    """One new token of one row, as :meth:`Generator.token_events` yields it."""

    row: int
    text: str  # the text now safe to show ("" while a character's bytes are incomplete)
    token: int | None  # the token id (None: held-back text released at the end)
    logits: torch.Tensor | None  # (d_vocab,): the raw logits the token was drawn from


# ---------------------------------------------------------------------------
# Logits -> next token
# ---------------------------------------------------------------------------


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make every token already seen less likely (CTRL's penalty)."""
    # logits: (batch, d_vocab) float; seen: (batch, d_vocab) bool
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest to -inf."""
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[:, -1:]  # (batch, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the most likely tokens until their probability reaches ``p``."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (batch, d_vocab)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely tokens
    drop_sorted = mass_before >= p  # the first token has mass_before 0 < p: always kept
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def choose_next(logits: torch.Tensor, cfg: SamplingConfig, seen: torch.Tensor | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """Penalty, temperature, top-k, top-p, then a draw (or the arg-max)."""
    # logits: (batch, d_vocab) -> (batch,) token ids
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if cfg.greedy:
        return logits.argmax(dim=-1)
    logits = logits / cfg.temperature
    if cfg.top_k is not None:
        logits = filter_top_k(logits, cfg.top_k)
    if cfg.top_p < 1.0:
        logits = filter_top_p(logits, cfg.top_p)
    probs = logits.softmax(dim=-1)  # (batch, d_vocab)
    if generator is not None and generator.device != probs.device:  # e.g. a CPU generator, a GPU model
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (batch,)


# ---------------------------------------------------------------------------
# The token loop: left-padded window, KV cache, sliding window
# ---------------------------------------------------------------------------


class Window:
    """The tokens the model currently sees, one row per sequence, left-padded.

    ``tokens[i, pad[i]:length]`` are row ``i``'s real tokens; the ``n_ctx``
    columns are allocated once.  Row ``i``'s token in column ``c`` sits at
    position ``c - pad[i]``."""

    def __init__(self, rows: list[list[int]], n_ctx: int, pad_id: int, device=None):
        self.n_ctx = n_ctx
        self.pad_id = pad_id
        self.tokens = torch.full((len(rows), n_ctx), pad_id, dtype=torch.long, device=device)  # (batch, n_ctx)
        self.fill(rows)

    def fill(self, rows: list[list[int]]) -> None:
        self.length = max(len(r) for r in rows)
        self.pad = torch.tensor([self.length - len(r) for r in rows], device=self.tokens.device)  # (batch,)
        self.padded = bool(self.pad.any())
        self.tokens.fill_(self.pad_id)
        for i, r in enumerate(rows):
            self.tokens[i, self.length - len(r):self.length] = torch.tensor(r, dtype=torch.long)
        columns = torch.arange(self.n_ctx, device=self.tokens.device)
        self.real = columns[None, :] >= self.pad[:, None]  # (batch, n_ctx): True on real tokens

    def rows(self) -> list[list[int]]:
        return [self.tokens[i, p:self.length].tolist() for i, p in enumerate(self.pad.tolist())]

    def append(self, token: torch.Tensor) -> None:
        self.tokens[:, self.length] = token  # token: (batch,)
        self.length += 1

    def positions(self, start: int, end: int) -> torch.Tensor | None:
        """Positions of columns ``start:end``; None (the model's default) without padding."""
        if not self.padded:
            return None
        columns = torch.arange(start, end, device=self.tokens.device)
        return (columns[None, :] - self.pad[:, None]).clamp(min=0)  # (batch, end - start)

    def mask(self, start: int, end: int) -> torch.Tensor | None:
        """Attention mask for queries in columns ``start:end`` over keys ``0:end``:
        causal, padding hidden.  A padding query sees itself only, so that its
        softmax has something to normalise (its output is never used)."""
        if not self.padded:
            return None
        q = torch.arange(start, end, device=self.tokens.device)[:, None]  # (queries, 1)
        k = torch.arange(end, device=self.tokens.device)[None, :]  # (1, keys)
        allowed = (k <= q) & self.real[:, None, :end]  # (batch, queries, keys)
        allowed = allowed | (k == q)
        return allowed[:, None]  # (batch, 1, queries, keys): broadcast over heads


def generate_ids(model: GPT, prompts: list[list[int]], cfg: SamplingConfig, pad_id: int,
                 use_cache: bool = True, seed: int = 0, generator: torch.Generator | None = None,
                 threads: ThreadChooser | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, ``(batch,)``, ``cfg.max_new_tokens`` times
    (see :func:`generate_steps`, which also gives the logits each was drawn from)."""
    for token, _ in generate_steps(model, prompts, cfg, pad_id, use_cache, seed, generator, threads):
        yield token


@torch.inference_mode()
def generate_steps(model: GPT, prompts: list[list[int]], cfg: SamplingConfig, pad_id: int,
                   use_cache: bool = True, seed: int = 0, generator: torch.Generator | None = None,
                   threads: ThreadChooser | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(token, logits)``, ``cfg.max_new_tokens`` times: the next token of
    every row, ``(batch,)``, and the model's raw logits it was chosen from,
    ``(batch, d_vocab)`` (before penalty, temperature and filters).

    ``prompts`` must be non-empty and at most ``n_ctx`` tokens each.  The
    caller stops early by simply not asking for more.  ``use_cache=False``
    is the plain path: a full forward over the window at every step.
    Random draws come from ``generator`` if given, else from a fresh one seeded with ``seed``.
    On a CPU, each step runs with the thread count that ``threads`` (a
    :class:`ThreadChooser`, kept across calls by :class:`Generator`; a fresh
    one if None) finds fastest: all cores on a quiet machine, one when other
    programs keep the cores busy."""
    n_ctx = model.cfg.n_ctx
    device = model.embed.W_E.device
    window = Window(prompts, n_ctx, pad_id, device)
    cache = KVCache(model.cfg, len(prompts), n_ctx, device, model.embed.W_E.dtype) if use_cache else None
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(seed)
    seen = None
    if cfg.repetition_penalty != 1.0:
        seen = torch.zeros(len(prompts), model.cfg.d_vocab, dtype=torch.bool, device=device)  # (batch, d_vocab)
        for i, row in enumerate(prompts):
            seen[i, row] = True

    if device.type == "cpu":
        threads = threads or ThreadChooser()

    def stepping(record: bool):
        """The thread count for one forward pass (a prefill is not timed: it is unlike the steps)."""
        return threads.step(record) if device.type == "cpu" else contextlib.nullcontext()

    def run_window() -> torch.Tensor:
        """Prefill: run every column of the window; return the last position's logits."""
        if cache is not None:
            cache.reset()
        n = window.length
        with stepping(record=False):
            x = model.residual(window.tokens[:, :n], cache, window.positions(0, n), window.mask(0, n))
            return model.unembed(x[:, -1])  # (batch, d_vocab): the last position only

    def run_newest() -> torch.Tensor:
        """One cached step: only the newest column goes through the model."""
        n = window.length
        with stepping(record=True):
            x = model.residual(window.tokens[:, n - 1:n], cache, window.positions(n - 1, n), window.mask(n - 1, n))
            return model.unembed(x[:, -1])  # (batch, d_vocab)

    logits = run_window()
    for step in range(cfg.max_new_tokens):
        token = choose_next(logits, cfg, seen, generator)  # (batch,)
        yield token, logits
        if step == cfg.max_new_tokens - 1:
            return  # no forward pass for a token nobody will read
        if seen is not None:
            seen[torch.arange(len(prompts), device=device), token] = True
        if window.length == n_ctx:  # full: slide (see the module docstring)
            keep = n_ctx // 2
            window.fill([(row + [t])[-keep:] for row, t in zip(window.rows(), token.tolist())])
            logits = run_window()
        else:
            window.append(token)
            logits = run_newest() if cache is not None else run_window()


def model_in_dtype(model: GPT, dtype: str) -> GPT:
    """A copy of ``model`` whose weights, activations and KV cache are in ``dtype``.

    At batch 1 a generation step reads every weight once and does little
    else, so its speed is memory bandwidth / the weights' bytes: bf16 halves
    the bytes.  Logits are turned back to fp32 before sampling.  bf16 keeps
    8 bits of mantissa, so where two tokens' logits are within rounding of
    each other greedy output can differ from fp32's (how often:
    ``python -m benchmarks generate``).

    But PyTorch's CPU product of one row by a bf16 matrix is slower than its
    fp32 one, so on a CPU with bf16 in hardware the copy's weights are also
    packed for oneDNN's faster kernel (:meth:`GPT.pack_weights`).  The copy
    is made outside inference mode even when called inside it: a pack keeps
    track of its weight's in-place changes, which inference tensors do not count."""
    with torch.inference_mode(False):
        copied = copy.deepcopy(model).to(DTYPES[dtype]).eval()
        on_cpu = copied.embed.W_E.device.type == "cpu"
        if dtype == "bf16" and on_cpu and cpu_has_native_bf16() and torch.backends.mkldnn.is_available():
            copied.pack_weights()
    return copied


def sample(model: GPT, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None) -> list[int]:
    """Continue ``prompt`` (token ids) by ``max_new_tokens`` tokens; return only the new ones.

    The short form, for a sample at the end of training: temperature 0 means
    greedy, ``top_k`` None or 0 keeps every token, <|endoftext|> does not stop
    it.  The model is put back in the mode it was in."""
    was_training = model.training
    model.eval()
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, greedy=temperature <= 0,
                         temperature=temperature if temperature > 0 else 1.0,
                         top_k=top_k or None, stop_at_eot=False)
    try:
        steps = generate_ids(model, [prompt[-model.cfg.n_ctx:]], cfg, pad_id=0, generator=generator)
        return [int(t) for t in steps]
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------
# Tokens -> text: streaming and stop strings
# ---------------------------------------------------------------------------


class TextStream:
    """Turn token bytes into printable text as they arrive.

    An incremental UTF-8 decoder keeps the first bytes of a character until
    the rest arrive, so we never print half a character.  Text that could be
    the start of a stop string is also held back until we know."""

    def __init__(self, stop: Sequence[str] = ()):
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stop = tuple(stop)
        self.held = ""  # decoded text not yet released
        self.stopped = False

    def push(self, data: bytes, final: bool = False) -> str:
        """Feed bytes; return the text that is now safe to show."""
        if self.stopped:
            return ""
        text = self.held + self.decoder.decode(data, final=final)
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return text[:min(hits)]
        hold = 0 if final else max((n for s in self.stop for n in range(1, len(s))
                                    if text.endswith(s[:n])), default=0)
        self.held = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold]

    def finish(self) -> str:
        return self.push(b"", final=True)


class Generator:
    """Generate text from a model and its tokenizer, in a notebook or the CLI.

    >>> gen = Generator(model, tokenizer)
    >>> gen.generate("To be, or not", max_new_tokens=20, seed=1)[0].text
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, use_cache: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.use_cache = use_cache
        self.copies: dict[str, GPT] = {}  # dtype -> the model in that dtype, made on first use
        self.threads = ThreadChooser()  # what it learns about this machine's load carries over between calls

    def model_in(self, dtype: str) -> GPT:
        """The model with its weights in ``dtype`` (see :func:`model_in_dtype`), made once and kept."""
        if DTYPES[dtype] == self.model.embed.W_E.dtype:
            return self.model
        if dtype not in self.copies:
            self.copies[dtype] = model_in_dtype(self.model, dtype)
        return self.copies[dtype]

    def encode_prompt(self, prompt: str) -> tuple[list[int], int]:
        """The prompt's ids, cut to the context window; also how many were cut.
        An empty prompt starts from ``<|endoftext|>``, as GPT-2 was trained."""
        ids = self.tokenizer.encode(prompt) or [self.tokenizer.eot_token]
        n_ctx = self.model.cfg.n_ctx
        return ids[-n_ctx:], max(0, len(ids) - n_ctx)

    def generate(self, prompts: str | Sequence[str] = "", config: SamplingConfig | None = None,
                 on_text: Callable[[int, str], None] | None = None, **overrides) -> list[Generation]:
        """Generate ``num_samples`` samples for each prompt (prompt-major order).

        ``on_text(row, text)`` is called with each piece of text as soon as it
        is safe to show (for streaming).  Keyword arguments override fields
        of ``config``: ``generate("Hi", max_new_tokens=5, greedy=True)``."""
        events = self.events(prompts, config, **overrides)
        while True:
            try:
                row, text = next(events)
            except StopIteration as done:
                return done.value
            if on_text is not None:
                on_text(row, text)

    def stream(self, prompt: str = "", config: SamplingConfig | None = None, **overrides) -> Iterator[str]:
        """Yield the text of one sample piece by piece, as it is produced."""
        cfg = dataclasses.replace(config or SamplingConfig(), **{**overrides, "num_samples": 1})
        for _, text in self.events(prompt, cfg):
            yield text

    def events(self, prompts: str | Sequence[str], config: SamplingConfig | None = None,
               **overrides) -> Iterator[tuple[int, str]]:
        """Yield ``(row, text)`` pieces; return the list of :class:`Generation`."""
        steps = self.token_events(prompts, config, **overrides)
        while True:
            try:
                event = next(steps)
            except StopIteration as done:
                return done.value
            if event.text:
                yield event.row, event.text

    def token_events(self, prompts: str | Sequence[str], config: SamplingConfig | None = None,
                     **overrides) -> Iterator[TokenEvent]:
        """Yield a :class:`TokenEvent` for every new token of every row (and for
        text held back until the end); return the list of :class:`Generation`."""
        cfg = config or SamplingConfig()
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise UserError("no prompts given; pass at least one (an empty string starts from <|endoftext|>)")
        rows = [self.encode_prompt(p)[0] for p in prompts for _ in range(cfg.num_samples)]
        seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(2**63)
        eot = self.tokenizer.eot_token
        streams = [TextStream(cfg.stop) for _ in rows]
        tokens: list[list[int]] = [[] for _ in rows]
        texts: list[list[str]] = [[] for _ in rows]
        reasons = ["length"] * len(rows)
        live = set(range(len(rows)))
        for step, logits in generate_steps(self.model_in(cfg.dtype), rows, cfg, eot, self.use_cache, seed,
                                           threads=self.threads):
            for i, t in enumerate(step.tolist()):
                if i not in live:
                    continue
                if cfg.stop_at_eot and t == eot:
                    reasons[i] = "eot"
                    live.discard(i)
                    continue
                tokens[i].append(t)
                text = streams[i].push(self.tokenizer.decode_bytes([t]))
                if streams[i].stopped:
                    reasons[i] = "stop"
                    live.discard(i)
                texts[i].append(text)
                yield TokenEvent(i, text, t, logits[i])
            if not live:
                break
        for i, s in enumerate(streams):
            text = s.finish()
            if text:
                texts[i].append(text)
                yield TokenEvent(i, text, None, None)
        return [Generation("".join(texts[i]), tokens[i], reasons[i], seed) for i in range(len(rows))]

    @torch.inference_mode()
    def next_logits(self, prompt: str) -> torch.Tensor:
        """The raw logits, ``(d_vocab,)``, that the first new token after
        ``prompt`` is drawn from (the same context :meth:`generate` uses)."""
        ids, _ = self.encode_prompt(prompt)
        device = self.model.embed.W_E.device
        return self.model(torch.tensor([ids], device=device))[0, -1].float()
