"""Serving a model: the playground page and an OpenAI-compatible API, in one process.

``gpt2lab serve`` starts an ASGI app (Starlette, run by uvicorn) with:

* ``GET /``: the playground page (``playground/``: HTML, a small script, CSS;
  nothing from the internet);
* ``GET /v1/models`` and ``POST /v1/completions``: OpenAI's completions API,
  so that the ``openai`` package and other clients work unchanged;
* ``GET /health``, and the analysis endpoints the page draws from:
  ``GET /api/model`` (the model card), ``POST /api/analyze`` (per-token loss
  and guesses, next-token logits) and ``POST /api/attention``.

**One thread owns the model** (``worker.py``): every request is a job that
takes its turn one token at a time, so concurrent clients each see their own
stream while the event loop stays free to answer ``/health`` and to notice
clients that leave (which cancels their jobs).  Requests beyond
``max_requests`` are refused with 429 rather than queued without end.

Every error a client can cause is answered as OpenAI does,
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status naming
the field; anything unexpected is logged here and answered with a 500 that
carries no traceback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import importlib.resources
import json
import logging
import math
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .completions import CompletionRequest, completion_steps, parse_completion
from .errors import APIError, UserError
from .generate import check_dtype
from .worker import Job, ModelWorker, run_job

log = logging.getLogger("gpt2lab.server")


@dataclass
class ServeConfig:
    """How ``gpt2lab serve`` listens and what it accepts; each field is a flag."""

    host: str = "127.0.0.1"  # the address to listen on; 0.0.0.0 opens it to the network
    port: int = 8000  # 0 picks a free port (the URL printed says which)
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    max_n: int = 8  # the largest n (completions per prompt)
    max_rows: int = 16  # the most sequences one request generates at once (prompts x n)
    max_requests: int = 32  # requests running or waiting at once; more get 429
    max_body_bytes: int = 1_000_000  # larger request bodies get 413
    dtype: str = "fp32"  # the weights' format for completions, as in `gpt2lab generate --dtype`: fp32 or bf16

    def __post_init__(self) -> None:
        check_dtype(self.dtype)
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be between 0 and 65535, got {self.port}")
        for name in ("max_tokens", "max_n", "max_rows", "max_requests", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


# ---------------------------------------------------------------------------
# The model being served, and its card
# ---------------------------------------------------------------------------


@dataclass
class Served:
    """The model, its tokenizer (wrapped in a :class:`Generator`) and its card."""

    generator: object
    model_id: str
    card: dict


def model_card(model, tokenizer, kind: str, folder: Path) -> dict:
    """What the page shows about the model: preset, size, tokenizer, run, validation bits per byte."""
    from .model import PRESETS

    cfg = model.cfg.to_dict()
    preset = next((name for name, p in PRESETS.items()
                   if all(cfg[k] == v for k, v in p.items() if k != "n_ctx")), None)
    run = folder.parent.parent if folder.parent.name == "checkpoints" else None
    metrics = read_last_metrics(run) if run is not None else {}
    return {"preset": preset, "parameters": model.num_params(), "config": cfg,
            "tokenizer": {"kind": tokenizer.to_dict().get("kind", "gpt2"), "n_vocab": tokenizer.n_vocab},
            "source": "huggingface" if kind == "hf" else "gpt2lab", "path": str(folder),
            "run": str(run) if run is not None else None, "step": metrics.get("step"),
            "val_bpb": metrics.get("val_bpb"), "val_loss": metrics.get("val_loss")}


def read_last_metrics(run: Path) -> dict:
    """The run's last logged values (each field from the last line that has it)."""
    from .plots import read_metrics

    merged: dict = {}
    try:
        for row in read_metrics(run):
            merged.update(row)
    except (UserError, OSError):
        pass
    return merged


def load_served(path, dtype: str = "fp32") -> Served:
    """The model at ``path``, ready to serve completions in ``dtype`` (its copy in
    that format is made now, not on the first request)."""
    from .checkpoint import load_model, resolve_model_path
    from .generate import Generator

    kind, folder = resolve_model_path(path)
    model, tokenizer = load_model(path)
    card = {**model_card(model, tokenizer, kind, folder), "dtype": dtype}
    model_id = Path(card["run"] or folder).name
    generator = Generator(model, tokenizer)
    generator.model_in(dtype)
    return Served(generator, model_id, card)


# ---------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------


async def read_body(request, limit: int):
    """The request's JSON body, read up to ``limit`` bytes (413 beyond, 400 if not JSON)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is {int(declared):,} bytes; the limit is {limit:,} "
                            "(--max-body-bytes)", code="request_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise APIError(413, f"the request body is over the limit of {limit:,} bytes (--max-body-bytes)",
                           code="request_too_large")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})") from None


def text_field(body, name: str = "text") -> str:
    if not isinstance(body, dict) or not isinstance(body.get(name), str):
        raise APIError(400, f"'{name}' must be a string", param=name)
    return body[name]


def build_app(served: Served, cfg: ServeConfig):
    """The Starlette app: the page, the API, the analysis endpoints."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import FileResponse, JSONResponse, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from .completions import choice_logprobs, finish_reason, usage

    worker = ModelWorker(cfg.max_requests)
    generator = served.generator
    page = Path(str(importlib.resources.files("gpt2lab") / "playground"))

    async def index(request):
        return FileResponse(page / "index.html", headers={"Cache-Control": "no-store"})

    async def health(request):
        return JSONResponse({"status": "ok", "model": served.model_id, "requests": worker.busy(),
                             "steps": worker.steps})

    async def models(request):
        return JSONResponse({"object": "list", "data": [
            {"id": served.model_id, "object": "model", "created": int(time.time()), "owned_by": "gpt2lab"}]})

    async def card(request):
        return JSONResponse({"id": served.model_id, **served.card})

    async def completions(request):
        body = await read_body(request, cfg.max_body_bytes)
        req = parse_completion(body, generator, cfg)
        job = worker.submit(lambda: completion_steps(generator, req))
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                "created": int(time.time()), "model": served.model_id}
        if req.stream:
            return StreamingResponse(stream_completion(job, req, head), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(await whole_completion(request, job, req, head))

    async def whole_completion(request, job: Job, req: CompletionRequest, head: dict) -> dict:
        n = len(req.prompts) * req.n
        pieces = [[] for _ in range(n)]
        watcher = asyncio.create_task(cancel_on_disconnect(request, job))
        try:
            async for step in job.items():
                for piece in step:
                    pieces[piece.index].append(piece)
        finally:
            watcher.cancel()
            job.cancelled = True
        generations = job.value
        choices = [{"index": i, "text": "".join(p.text for p in pieces[i]),
                    "logprobs": choice_logprobs(generator, pieces[i], 0) if req.logprobs is not None else None,
                    "finish_reason": finish_reason(generations[i])} for i in range(n)]
        return {**head, "choices": choices, "usage": usage(req, generations)}

    async def stream_completion(job: Job, req: CompletionRequest, head: dict):
        offsets = [0] * (len(req.prompts) * req.n)
        try:
            async for step in job.items():
                choices = []
                for piece in step:
                    lp = choice_logprobs(generator, [piece], offsets[piece.index]) \
                        if req.logprobs is not None else None
                    offsets[piece.index] += len(piece.text)
                    choices.append({"index": piece.index, "text": piece.text, "logprobs": lp,
                                    "finish_reason": None})
                yield sse({**head, "choices": choices})
            ends = [{"index": i, "text": "", "logprobs": None, "finish_reason": finish_reason(g)}
                    for i, g in enumerate(job.value)]
            yield sse({**head, "choices": ends})
            if req.include_usage:
                yield sse({**head, "choices": [], "usage": usage(req, job.value)})
        except APIError as e:  # the status line is sent already: the error goes in the stream
            yield sse(e.body())
        finally:
            job.cancelled = True  # the client left, or the stream ended: either way the job is over
        yield "data: [DONE]\n\n"

    async def analyze(request):
        body = await read_body(request, cfg.max_body_bytes)
        text = text_field(body)
        top = body.get("top_k", 10)
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 50:
            raise APIError(400, "'top_k' must be an integer from 1 to 50", param="top_k")
        return JSONResponse(await run_job(worker, lambda: analyze_text(generator, text, top)))

    async def attention(request):
        body = await read_body(request, cfg.max_body_bytes)
        text = text_field(body)
        n_layers = generator.model.cfg.n_layers
        layer = body.get("layer", 0)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise APIError(400, f"'layer' must be an integer from 0 to {n_layers - 1}", param="layer")
        return JSONResponse(await run_job(worker, lambda: attention_of_text(generator, text, layer)))

    async def api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request, exc: HTTPException):
        return JSONResponse(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}").body(),
                            status_code=exc.status_code)

    async def server_error(request, exc: Exception):
        log.error("request failed", exc_info=exc)
        return JSONResponse(APIError(500, f"internal error ({type(exc).__name__}); see the server's log",
                                     kind="server_error").body(), status_code=500)

    routes = [Route("/", index), Route("/health", health), Route("/v1/models", models),
              Route("/v1/completions", completions, methods=["POST"]), Route("/api/model", card),
              Route("/api/analyze", analyze, methods=["POST"]),
              Route("/api/attention", attention, methods=["POST"]),
              Mount("/playground", StaticFiles(directory=page), name="playground")]
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        worker.stop()

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={APIError: api_error, HTTPException: http_error, Exception: server_error})
    app.state.worker = worker
    return app


def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def cancel_on_disconnect(request, job: Job) -> None:
    """Cancel ``job`` when the client of a non-streaming request goes away."""
    while not job.cancelled:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancelled = True



# ---------------------------------------------------------------------------
# What the page draws: run on the model thread
# ---------------------------------------------------------------------------


def last_ids(generator, text: str) -> tuple[list[int], int]:
    """The last ``n_ctx - 1`` tokens of ``text`` (room for ``<|endoftext|>`` in
    front, as in training), and how many were dropped from the start."""
    ids = generator.tokenizer.encode(text)
    keep = generator.model.cfg.n_ctx - 1
    return ids[-keep:], max(0, len(ids) - keep)


def analyze_text(generator, text: str, top_k: int) -> dict:
    """Per token: its loss and the model's guesses for it; and the next token's raw logits."""
    from .evaluate import token_losses

    tokenizer = generator.tokenizer
    ids, dropped = last_ids(generator, text)
    tokens = []
    if ids:
        losses, probs, top_ids = token_losses(generator.model, ids, tokenizer.eot_token, top_k)
        for i, t in enumerate(ids):
            tokens.append({"id": t, "text": tokenizer.decode([t]), "loss": float(losses[i]),
                           "prob": math.exp(-float(losses[i])),
                           "top": [{"id": int(j), "text": tokenizer.decode([int(j)]), "prob": float(p)}
                                   for j, p in zip(top_ids[i], probs[i])]})
    logits = generator.next_logits(text)  # (d_vocab,), the context generation continues from
    order = logits.topk(min(top_k * 5, logits.numel())).indices.tolist()
    return {"tokens": tokens, "dropped": dropped,
            "next": {"logits": base64.b64encode(logits.cpu().numpy().astype("<f4").tobytes()).decode(),
                     "top": [{"id": i, "text": tokenizer.decode([i])} for i in order]}}


def attention_of_text(generator, text: str, layer: int) -> dict:
    """Every head's attention pattern in ``layer`` over ``<|endoftext|>`` and the text's tokens."""
    from .evaluate import attention_of_ids

    tokenizer = generator.tokenizer
    ids, dropped = last_ids(generator, text)
    ids = [tokenizer.eot_token] + ids
    patterns = attention_of_ids(generator.model, ids, [layer])[0]  # (head, pos, pos)
    rounded = [[[round(v, 4) for v in row] for row in head] for head in patterns.tolist()]
    return {"layer": layer, "tokens": [tokenizer.decode([t]) for t in ids], "dropped": dropped,
            "patterns": rounded}


# ---------------------------------------------------------------------------
# gpt2lab serve
# ---------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``; a one-line error if that cannot be done."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: {e.strerror}; give an address such as 127.0.0.1") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use; choose another with --port "
                            "(--port 0 picks a free one)") from None
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    return sock


def serve(model_path, cfg: ServeConfig, announce=print) -> None:
    """Load the model, listen, and serve until Ctrl-C."""
    import uvicorn

    served = load_served(model_path, cfg.dtype)
    sock = listen(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    logging.basicConfig(level=logging.WARNING, format="gpt2lab serve: %(message)s")
    server = uvicorn.Server(uvicorn.Config(build_app(served, cfg), log_level="warning",
                                           timeout_graceful_shutdown=2, access_log=False))
    announce(f"serving {served.model_id} ({served.card['parameters']:,} parameters, {cfg.dtype}) at http://{shown}:{port}/ "
             "(the playground; the API is under /v1); Ctrl-C stops", flush=True)
    server.run(sockets=[sock])
    announce("stopped", flush=True)
