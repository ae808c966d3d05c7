"""The ``gpt2lab`` command line.

Each subcommand is two small functions over the library: one declares its
flags, the other parses nothing, calls the module that does the work, and
prints.  ``@command`` registers the pair in :data:`COMMANDS`, which is all
there is to adding a subcommand (and how tests find every one of them).

Flags used by several commands (``--model``, ``--json``, ``--out`` with
``--overwrite``) are defined once, below; the fields of a config dataclass
(``TrainConfig``, ``GPTConfig``, ``SamplingConfig``, ``BPEConfig``) become
flags one to one.  With ``--json``, the last line of standard output is one
JSON object, for scripts.

Errors the user can fix (:class:`UserError`) are printed on one line and
exit with status 2, without a traceback.  Anything unexpected prints a short
message and the path of a log file holding the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import sys
import tempfile
import traceback
import types
import typing
from dataclasses import dataclass
from typing import Callable

from .bpe import BPEConfig
from .errors import Stopped, UserError

# ---------------------------------------------------------------------------
# Config dataclasses <-> flags, one flag per field
# ---------------------------------------------------------------------------


def field_type(cls, field: dataclasses.Field):
    """The plain Python type of a dataclass field (``int | None`` -> ``int``)."""
    hint = typing.get_type_hints(cls)[field.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add ``--field-name`` for every field of the dataclass ``cls``.
    Defaults are ``None`` so that we can tell what the user actually set."""
    group = parser.add_argument_group(f"{cls.__name__} fields")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        t = field_type(cls, f)
        if t is bool:  # `--flag` alone means true; `--flag false` is also accepted
            kind = dict(type=parse_bool, nargs="?", const=True, metavar="BOOL")
        elif typing.get_origin(t) in (list, tuple):  # `--flag A B C`
            item = typing.get_args(t)[0]
            kind = dict(type=item, nargs="+", metavar=item.__name__.upper())
        else:
            kind = dict(type=t, metavar=t.__name__.upper())
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, **kind,
                           help=f"(default: {f.default!r})" if f.default is not dataclasses.MISSING else None)


def config_overrides(args: argparse.Namespace, cls) -> dict:
    """The fields of ``cls`` that were set on the command line."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None}


def config_flags(overrides: dict) -> list[str]:
    """``{"batch_size": 4}`` -> ``["--batch-size", "4"]``: overrides back into flags."""
    flags = []
    for name, value in overrides.items():
        flags += ["--" + name.replace("_", "-"), str(value).lower() if isinstance(value, bool) else repr(value)
                  if isinstance(value, float) else str(value)]
    return flags


# ---------------------------------------------------------------------------
# Flags shared by several commands
# ---------------------------------------------------------------------------


def model_flag(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help="a run, a checkpoint or a Hugging Face GPT-2 directory")


def json_flag(p: argparse.ArgumentParser, help: str = "print one JSON object as the last line") -> None:
    p.add_argument("--json", action="store_true", help=help)


def out_flags(p: argparse.ArgumentParser, help: str, default: str | None = None, required: bool = False) -> None:
    """``--out FILE`` and ``--overwrite`` (without which an existing ``--out`` is refused)."""
    p.add_argument("--out", default=default, required=required, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def text_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", required=True, help="the text to look at (the text itself, not a file)")


def sampling_flags(p: argparse.ArgumentParser) -> None:
    """Every ``SamplingConfig`` field: ``--temperature``, ``--top-k``, ``--max-new-tokens``, ..."""
    from .generate import SamplingConfig

    add_config_flags(p, SamplingConfig)


def print_json(obj) -> None:
    print(json.dumps(obj), flush=True)


# ---------------------------------------------------------------------------
# The subcommands
# ---------------------------------------------------------------------------


@dataclass
class Command:
    """``gpt2lab NAME``: ``flags(parser)`` declares its flags (and may set its
    ``--help`` description), ``run(args)`` does it."""

    name: str  # "tokenizer train" for an action of a command group
    run: Callable[[argparse.Namespace], None]
    flags: Callable[[argparse.ArgumentParser], None]
    help: str  # its line in `gpt2lab --help`


COMMANDS: dict[str, Command] = {}  # in the order of `gpt2lab --help`
GROUPS = {"tokenizer": "train tokenizers"}  # commands with actions: `gpt2lab tokenizer train`


def command(name: str, flags, help: str):
    """Register the decorated ``run(args)`` as ``gpt2lab NAME``, with ``flags(parser)``."""
    def register(run):
        COMMANDS[name] = Command(name, run, flags, help)
        return run
    return register


def tokenize_flags(p) -> None:
    p.add_argument("file", help="a UTF-8 text file")
    p.add_argument("--tokenizer", default="gpt2",
                   help="gpt2, char (built from FILE itself) or the path of a tokenizer JSON file")
    p.add_argument("--show", action="store_true", help="print the text split into tokens")
    json_flag(p)


@command("tokenize", tokenize_flags, help="turn a text file into token ids")
def cmd_tokenize(args) -> None:
    from .data import read_text
    from .tokenizer import build_tokenizer, token_pieces

    text = read_text(args.file)
    tokenizer = build_tokenizer(args.tokenizer, lambda: [text])  # char: the file's own characters
    ids = tokenizer.encode(text)
    if args.json:
        out = {"tokens": ids, "count": len(ids)}
        if args.show:
            out["pieces"] = token_pieces(tokenizer, ids)
        print_json(out)
    elif args.show:
        print(show_tokens(token_pieces(tokenizer, ids), color=sys.stdout.isatty()))
    else:
        print(" ".join(map(str, ids)))
    if not args.json:
        print(f"{len(ids)} tokens, {len(text.encode('utf-8')) / max(len(ids), 1):.2f} bytes per token",
              file=sys.stderr)


# Background colours that alternate between neighbouring tokens (256-colour ANSI).
TOKEN_COLOURS = (153, 223, 194, 217)


def show_tokens(pieces: list[str], color: bool) -> str:
    """Tokens with visible boundaries: alternating background colours on a
    terminal, ``|`` between tokens otherwise (pipes, files)."""
    if not color:
        return "|".join(pieces)
    return "".join(f"\x1b[48;5;{TOKEN_COLOURS[i % len(TOKEN_COLOURS)]}m\x1b[30m{p}\x1b[0m"
                   for i, p in enumerate(pieces))


def tokenizer_train_flags(p) -> None:
    p.add_argument("--data", required=True, help="shakespeare (the embedded plays' training split), a text file, "
                   "a directory of .txt/.md files, .jsonl, .parquet or hf:DATASET (as for train --data)")
    out_flags(p, "the tokenizer JSON file to write", required=True)
    json_flag(p)
    add_config_flags(p, BPEConfig)


@command("tokenizer train", tokenizer_train_flags, help="train a byte-level BPE on a corpus and save it as JSON")
def cmd_tokenizer_train(args) -> None:
    import time
    from pathlib import Path

    from .data import iter_documents, parse_source
    from .tokenizer import train_bpe

    cfg = BPEConfig(**config_overrides(args, BPEConfig))
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    start = time.perf_counter()
    tokenizer = train_bpe(iter_documents(parse_source(args.data), "train"), cfg)
    seconds = time.perf_counter() - start
    tokenizer.save(out, overwrite=args.overwrite)
    if args.json:
        print_json({"out": str(out), "n_vocab": tokenizer.n_vocab, "seconds": seconds})
    else:
        short = f" (the corpus ran out of pairs to merge before {cfg.vocab_size})" \
            if tokenizer.n_vocab < cfg.vocab_size else ""
        print(f"trained a {tokenizer.n_vocab}-token byte-level BPE{short} in {seconds:.1f} s; wrote {out}")


def eval_flags(p) -> None:
    model_flag(p)
    p.add_argument("--text", required=True, help="a UTF-8 text file to score")
    json_flag(p)


@command("eval", eval_flags, help="loss, perplexity and bits per byte of a model on a text")
def cmd_eval(args) -> None:
    from .checkpoint import load_model
    from .data import read_text
    from .evaluate import score_text

    text = read_text(args.text)
    if not text:
        raise UserError(f"{args.text} is empty; give a file with some text to score")
    model, tokenizer = load_model(args.model)
    score = score_text(model, tokenizer, text)
    if args.json:
        print_json(score.to_dict())
    else:
        print(f"loss {score.loss:.4f} nats/token | perplexity {score.perplexity:.2f} | "
              f"{score.bits_per_byte:.4f} bits/byte | {score.tokens} tokens, {score.bytes} bytes")


def export_flags(p) -> None:
    model_flag(p)
    p.add_argument("--to", required=True, help="the directory to create")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty directory")
    json_flag(p)


@command("export", export_flags, help="write a model in Hugging Face GPT-2 format")
def cmd_export(args) -> None:
    from .checkpoint import export_hf, load_model

    model, tokenizer = load_model(args.model)
    folder = export_hf(model, tokenizer, args.to, overwrite=args.overwrite)
    if args.json:
        print_json({"exported": str(folder)})
    else:
        print(f"wrote a Hugging Face GPT-2 model to {folder}")


def generate_flags(p) -> None:
    from .generate import MAX_NEW_TOKENS, MAX_SAMPLES

    p.description = (f"Generate text.  --max-new-tokens is capped at {MAX_NEW_TOKENS:,} and --num-samples at "
                     f"{MAX_SAMPLES}.  Sampling order: repetition penalty, temperature, top-k, top-p.")
    model_flag(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="the prompt text (default: empty, i.e. start from <|endoftext|>)")
    source.add_argument("--prompt-file", help="a UTF-8 file holding the prompt")
    sampling_flags(p)
    p.add_argument("--interactive", action="store_true", help="read prompts from standard input until EOF")
    json_flag(p, help="end each generation with one JSON line")


@command("generate", generate_flags, help="generate text from a prompt, streaming it as it is produced")
def cmd_generate(args) -> None:
    from .checkpoint import load_model
    from .data import read_text
    from .generate import Generator, SamplingConfig

    if args.interactive and (args.prompt is not None or args.prompt_file is not None):
        raise UserError("--interactive reads prompts from standard input; drop --prompt/--prompt-file")
    cfg = SamplingConfig(**config_overrides(args, SamplingConfig))  # checked before the model loads
    prompt = read_text(args.prompt_file) if args.prompt_file is not None else (args.prompt or "")
    generator = Generator(*load_model(args.model))
    if not args.interactive:
        return generate_once(generator, prompt, cfg, args.json)
    while True:
        print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:  # EOF
            print(file=sys.stderr)
            return None
        generate_once(generator, line.rstrip("\n"), cfg, args.json)


def generate_once(generator, prompt: str, cfg, as_json: bool) -> None:
    """One prompt's generation: one sample streamed as it comes, several printed at the end."""
    import time

    ids, cut = generator.encode_prompt(prompt)
    if cut:
        print(f"note: the prompt has {len(ids) + cut} tokens, more than the model's context of "
              f"{len(ids)}; keeping the last {len(ids)}", file=sys.stderr)
    streaming = cfg.num_samples == 1

    def show(row: int, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    start = time.perf_counter()
    samples = generator.generate(prompt, cfg, on_text=show if streaming else None)
    seconds = time.perf_counter() - start
    if streaming:
        print(flush=True)
    else:
        for i, s in enumerate(samples):
            print(f"--- sample {i + 1} ---\n{s.text}", flush=True)
    n_new = sum(len(s.tokens) for s in samples)
    if as_json:
        print_json({"text": samples[0].text, "tokens": samples[0].tokens,
                    "tokens_per_sec": n_new / seconds if seconds > 0 else None,
                    "new_tokens": n_new, "seconds": seconds, "prompt_tokens": len(ids),
                    "finish_reason": samples[0].finish_reason, "seed": samples[0].seed,
                    "samples": [dataclasses.asdict(s) for s in samples]})
    else:
        print(f"{n_new} new tokens in {seconds:.2f} s ({n_new / max(seconds, 1e-9):.1f} tokens/s)", file=sys.stderr)


def info_flags(p) -> None:
    model_flag(p, required=False)
    p.add_argument("--preset", help="or a preset name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, mini, tiny)")
    json_flag(p)


@command("info", info_flags, help="a model's config and parameter count")
def cmd_info(args) -> None:
    from .checkpoint import load_model, resolve_model_path
    from .model import GPT, GPTConfig

    if args.model is None and args.preset is None:
        raise UserError("no model given; give --model PATH or --preset NAME")
    if args.model is not None:
        model, tokenizer = load_model(args.model)
        source, tok = str(resolve_model_path(args.model)[1]), tokenizer.to_dict().get("kind")
    else:
        model, source, tok = GPT(GPTConfig.from_preset(args.preset)), f"preset {args.preset}", None
    info = {"source": source, "config": model.cfg.to_dict(), "parameters": model.num_params(),
            "parameters_without_positions": model.num_params(include_position=False), "tokenizer": tok}
    if args.json:
        print_json(info)
    else:
        print(f"{source}")
        for k, v in info["config"].items():
            print(f"  {k:16s} {v}")
        print(f"  parameters       {info['parameters']:,} (tied embeddings, positions included)")


def train_flags(p) -> None:
    from .model import GPTConfig
    from .recipe import TrainConfig

    from .finetune import FINETUNE_DEFAULTS, TRAIN_ONLY_CHOICES

    finetune_defaults = " ".join(f"--{k.replace('_', '-')} {v if isinstance(v, str) else format(v, 'g')}"
                                 for k, v in FINETUNE_DEFAULTS.items())
    p.description = ("Train a GPT-2. Every TrainConfig and GPTConfig field is a flag. Fine-tuning: --init-from "
                     "PATH (a run, a checkpoint or a Hugging Face GPT-2 directory; nothing is downloaded) starts "
                     "from that model, with its shape and tokenizer (only a smaller --n-ctx and --dropout may "
                     f"differ), a fresh optimizer and the fine-tuning defaults {finetune_defaults} (a trained "
                     "model needs a lower peak learning rate and a short warmup; see the README). "
                     f"--train-only {TRAIN_ONLY_CHOICES} freezes the rest.")
    p.add_argument("--preset", help="model preset to start from (default: the recipe's mini model, n_ctx 128)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    json_flag(p, help="print a JSON summary as the last line")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel processes on this machine, started with torchrun (default 1; "
                        "for several machines run torchrun yourself, see the README)")
    add_config_flags(p, TrainConfig)
    add_config_flags(p, GPTConfig)


@command("train", train_flags, help="train a GPT-2 (no arguments: the default recipe on Shakespeare)")
def cmd_train(args) -> None:
    from .distributed import lost_rank, stop
    from .model import GPTConfig
    from .recipe import TrainConfig

    train_over = config_overrides(args, TrainConfig)
    model_over = config_overrides(args, GPTConfig)
    if args.nproc != 1:
        return launch_train(args, train_over, model_over)
    try:
        result = run_train(args, train_over, model_over)
    except RuntimeError as e:
        lost = lost_rank(e)
        if lost is None:
            raise
        raise lost from None
    finally:
        stop()  # leave the process group, if torchrun started us
    if result.rank == 0:  # rank 0 reports for the whole job
        report_run(result, args.json)
    return None


def launch_train(args, train_over: dict, model_over: dict) -> None:
    """``train --nproc N``: the same command as N data-parallel ranks (torchrun on this machine)."""
    from . import distributed
    from .recipe import TrainConfig
    from .runs import default_run_dir

    if distributed.env_ranks() is not None:
        raise UserError("--nproc cannot be used under torchrun: torchrun already chose the number of processes")
    TrainConfig(**train_over)  # bad values fail here, once, before any process starts
    if args.resume is None and "out" not in train_over:
        train_over = {**train_over, "out": str(default_run_dir())}  # so that we can name it if a rank fails
    argv = ["train", *(["--preset", args.preset] if args.preset else []),
            *(["--resume", args.resume] if args.resume else []), *(["--json"] if args.json else []),
            *config_flags(train_over), *config_flags(model_over)]
    distributed.launch(argv, args.nproc, args.resume or train_over["out"])


def run_train(args, train_over: dict, model_over: dict):
    from .model import GPTConfig
    from .recipe import DEFAULT_MODEL_OVERRIDES, DEFAULT_PRESET, TrainConfig
    from .train import train

    if args.resume is not None:
        if args.preset is not None:
            raise UserError("--preset cannot be combined with --resume: a resumed run keeps its model; drop --preset")
        if "init_from" in train_over:
            raise UserError("--init-from cannot be combined with --resume: a resumed run continues from its own "
                            "checkpoint; drop --init-from (or start a new run without --resume)")
        return train(TrainConfig(), resume=args.resume, train_overrides=train_over, model_overrides=model_over)
    if "init_from" in train_over:
        from .finetune import FINETUNE_DEFAULTS

        if args.preset is not None:
            raise UserError("--preset cannot be combined with --init-from: the model comes from --init-from; "
                            "drop --preset")
        return train(TrainConfig(**{**FINETUNE_DEFAULTS, **train_over}), train_overrides=train_over,
                     model_overrides=model_over)
    cfg = TrainConfig(**train_over)
    if args.preset is None:  # the default recipe's model
        model_cfg = GPTConfig.from_preset(DEFAULT_PRESET, **{**DEFAULT_MODEL_OVERRIDES, **model_over})
    else:
        model_cfg = GPTConfig.from_preset(args.preset, **model_over)
    return train(cfg, model_cfg, model_overrides=model_over)


def report_run(result, as_json: bool) -> None:
    """Where a training run stopped, its final score and sample."""
    m = result.metrics
    if as_json:
        print_json({"run_dir": str(result.run_dir), "step": result.step, "tokens": result.tokens,
                    "stopped_by": result.stopped_by, "val_loss": m.get("val_loss"), "val_bpb": m.get("val_bpb"),
                    "checkpoint": str(result.checkpoint) if result.checkpoint else None, "sample": result.sample})
        return
    val = f"val loss {m['val_loss']:.4f}, {m['val_bpb']:.4f} bits/byte" if "val_loss" in m else "no evaluation"
    print(f"stopped at step {result.step} ({result.stopped_by}), {result.tokens:,} tokens: {val}")
    print(f"run directory {result.run_dir}: metrics.jsonl, loss.png, checkpoint {result.checkpoint}")
    if result.sample:
        print("\n--- sample ---")
        print(result.sample.replace("<|endoftext|>", "\n"))


def plot_flags(p) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="PNG file (default: RUN_DIR/loss.png for one run, loss_compare.png for several)")
    p.add_argument("--metric", choices=("loss", "bpb"), default="loss")
    json_flag(p)


@command("plot", plot_flags, help="plot the loss curves of one or more runs")
def cmd_plot(args) -> None:
    from pathlib import Path

    from .plots import plot_runs

    for d in args.runs:
        if not Path(d).is_dir():
            raise UserError(f"{d} is not a run directory; give the --out directory of a gpt2lab train run")
    out = args.out or (str(Path(args.runs[0]) / "loss.png") if len(args.runs) == 1 else "loss_compare.png")
    path = plot_runs(args.runs, out, metric=args.metric)
    if args.json:
        print_json({"plot": str(path)})
    else:
        print(f"wrote {path}")


def attention_flags(p) -> None:
    model_flag(p)
    text_flag(p)
    p.add_argument("--layer", type=int, help="only this layer (default: all)")
    p.add_argument("--head", type=int, help="only this head (default: all)")
    out_flags(p, "PNG file to write (default: attention.png)", default="attention.png")
    json_flag(p)


@command("attention", attention_flags, help="attention patterns on a text, as heatmaps (one panel per head)")
def cmd_attention(args) -> None:
    from .checkpoint import load_model
    from .evaluate import attention_patterns
    from .plots import attention_figure, check_png_path, save_figure

    check_png_path(args.out, args.overwrite)
    model, tokenizer = load_model(args.model)
    layers = pick("layer", args.layer, model.cfg.n_layers)
    heads = pick("head", args.head, model.cfg.n_heads)
    tokens, patterns = attention_patterns(model, tokenizer, args.text)  # (layer, head, pos, pos)
    fig = attention_figure(patterns[layers][:, heads], tokens, layers, heads)
    path = save_figure(fig, args.out, overwrite=args.overwrite)
    if args.json:
        print_json({"image": str(path), "tokens": tokens, "layers": layers, "heads": heads})
    else:
        print(f"wrote {len(layers) * len(heads)} attention heatmaps over {len(tokens)} tokens to {path}")


def pick(name: str, chosen: int | None, n: int) -> list[int]:
    """All of ``range(n)``, or the one index the user chose, checked."""
    if chosen is None:
        return list(range(n))
    if not 0 <= chosen < n:
        raise UserError(f"--{name} {chosen} does not exist: this model has {n} {name}s, numbered 0 to {n - 1}")
    return [chosen]


def inspect_flags(p) -> None:
    model_flag(p)
    text_flag(p)
    out_flags(p, "PNG file for the text coloured by per-token loss (default: inspect.png)", default="inspect.png")
    json_flag(p)


@command("inspect", inspect_flags, help="per token: its loss and the model's top-5 predictions")
def cmd_inspect(args) -> None:
    from .checkpoint import load_model
    from .evaluate import inspect_text
    from .plots import check_png_path, save_figure, token_label, token_loss_figure

    check_png_path(args.out, args.overwrite)
    model, tokenizer = load_model(args.model)
    views = inspect_text(model, tokenizer, args.text, top_k=5)
    path = save_figure(token_loss_figure([v.token for v in views], [v.loss for v in views]), args.out,
                       overwrite=args.overwrite)
    mean = sum(v.loss for v in views) / len(views)
    if args.json:
        print_json({"tokens": [v.to_dict() for v in views], "mean_loss": mean, "image": str(path)})
        return
    print(f"{'pos':>4} {'token':<16} {'loss':>7}  top-5 predictions for this position (probability)")
    for i, v in enumerate(views):
        top = "  ".join(f"{token_label(t)[:12]:<12} {p:.3f}" for t, p in v.top)
        print(f"{i:>4} {token_label(v.token)[:16]:<16} {v.loss:>7.3f}  {top}")
    print(f"mean loss {mean:.4f} nats/token over {len(views)} tokens; image written to {path}")


def serve_flags(p) -> None:
    from .server import ServeConfig

    p.description = ("Serve a model: the playground page at / and OpenAI's completions API under /v1 "
                     "(see the README).  Binds 127.0.0.1 unless told otherwise.")
    p.add_argument("--model", help="a run, a checkpoint or a Hugging Face GPT-2 directory "
                                   "(default: the newest run under runs/)")
    add_config_flags(p, ServeConfig)


@command("serve", serve_flags, help="the playground page and an OpenAI-compatible API for a model")
def cmd_serve(args) -> None:
    from .checkpoint import newest_run
    from .server import ServeConfig, serve

    cfg = ServeConfig(**config_overrides(args, ServeConfig))
    model = args.model if args.model is not None else newest_run("runs")
    if model is None:
        raise UserError("no trained run under runs/ to serve; train one with `gpt2lab train` "
                        "or point --model at a run, a checkpoint or a Hugging Face GPT-2 directory")
    try:
        serve(model, cfg)
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        print("stopped", flush=True)


# ---------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other gpt2lab error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """``gpt2lab`` with a subparser for each of :data:`COMMANDS` (nested under its group, if it has one)."""
    parser = Parser(prog="gpt2lab", description="Build, train and run GPT-2 from scratch.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups = {}
    for name, cmd in COMMANDS.items():
        group, _, action = name.rpartition(" ")
        if group and group not in groups:
            groups[group] = sub.add_parser(group, help=GROUPS[group]).add_subparsers(
                dest="action", metavar="ACTION", required=True)
        p = (groups[group] if group else sub).add_parser(action, help=cmd.help)
        cmd.flags(p)
        p.set_defaults(func=cmd.run)
    return parser


def report_crash(exc: BaseException) -> str:
    """Save the traceback of an unexpected error to a log file; return its path."""
    fd, path = tempfile.mkstemp(prefix="gpt2lab-crash-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write("gpt2lab " + " ".join(sys.argv[1:]) + "\n\n")
        traceback.print_exception(exc, file=f)
    return path


# Errors of the machine rather than of gpt2lab: the user fixes them by freeing
# space or fixing permissions, so they get a one-line message, not a crash log.
ENVIRONMENT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}


def rank_label() -> str:
    """" (rank 3)" in the errors of a data-parallel job's other ranks, so that
    the same error from several ranks reads as such, not as a repetition."""
    if "WORLD_SIZE" not in os.environ:  # not under torchrun (and no need to import torch to know it)
        return ""
    from .distributed import env_ranks

    here = env_ranks()
    return f" (rank {here[0]})" if here is not None and here[0] != 0 else ""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        if not getattr(e, "quiet", False):  # quiet: already reported (by rank 0 of a data-parallel job)
            print(f"gpt2lab {args.command}{rank_label()}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # invalid config values and tokenizer files are reported as ValueError
        print(f"gpt2lab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:
        if not rank_label() and not e.quiet:  # every rank of a data-parallel job stops alike: rank 0 says so
            print(f"gpt2lab {args.command}: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"gpt2lab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - last resort: short message, traceback to a log
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRORS:
            where = f"{e.filename}: " if e.filename else ""
            print(f"gpt2lab {args.command}: error: {where}{e.strerror}; free some disk space or fix the "
                  "permissions, then run the command again", file=sys.stderr)
            return 2
        path = report_crash(e)
        print(f"gpt2lab {args.command}: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              f"(traceback saved to {path}; please report it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
