"""A training run: setting it up (fresh or resumed), its directory, its checkpoints.

:func:`set_up` turns a config into a :class:`Run`: the processes joined, the
tokenizer and the tokens loaded, the model and its optimizer built, and, when
resuming, everything restored from the newest checkpoint.  The loop that
trains it is in ``train.py``; when to write a checkpoint is decided there,
how to write one (atomically) is here.

A run directory::

    RUN/
      config.json          the resolved TrainConfig and GPTConfig (and a fine-tuning run's init_from)
      metrics.jsonl        one JSON object per logged step
      loss.png             train/val loss and learning rate against tokens seen
      checkpoints/
        step_00000500/
          model.safetensors   weights (see checkpoint.py)
          model.json          model config + tokenizer
          training_state.pt   optimizer, step, sampler and RNG state (tensors and plain containers only)
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .batches import WindowSampler
from .checkpoint import CHECKPOINTS, MODEL_FILE, MODEL_META, fsync_dir, latest_checkpoint, load_state_strict, \
    read_json, read_safetensors, save_model, torch_load_safely, write_bytes_atomic, write_json
from .distributed import Ranks, env_ranks, start as start_ranks
from .errors import UserError
from .hardware import ThreadChooser, physical_cores, resolve_device, use_deterministic_kernels
from .model import GPT, GPTConfig
from .recipe import DEFAULT_MODEL_OVERRIDES, DEFAULT_PRESET, TrainConfig, adamw_flags, loss_function, make_optimizer

STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


# ---------------------------------------------------------------------------
# Setting up a run: fresh or resumed
# ---------------------------------------------------------------------------


@dataclass
class Run:
    """Everything a run is made of once it is set up, and how far it has got.

    ``step``, ``tokens`` and ``recent_losses`` move on with every step; they,
    the weights, the optimizer and the sampler are what a checkpoint saves."""

    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    ranks: Ranks
    tokenizer: object  # tokenizer.Tokenizer
    shards: object  # data.TokenShards: .train and .val tokens, .val_bytes_per_token
    model: GPT
    optimizer: torch.optim.Optimizer  # AdamW, or muon.Optimizers (Muon + AdamW)
    sampler: WindowSampler
    total_steps: int
    tokens_per_step: int  # the global batch, in tokens
    started: float  # time.monotonic() when train() was called
    step: int = 0
    tokens: int = 0
    elapsed_before: float = 0.0  # seconds spent by the run before it was resumed
    recent_losses: list[float] = field(default_factory=list)  # the spike detector's window
    checkpoint: Path | None = None  # the newest checkpoint written (or resumed from)
    step_model: torch.nn.Module | None = None  # step_model(x, y): the loss, gradients synced across ranks
    loss_fn: object = None  # loss_fn(x, y): step_model under this run's autocast and compile settings
    parent: dict | None = None  # a fine-tuning run's starting point (finetune.Parent), recorded in config.json
    threads: ThreadChooser | None = None  # with --adapt-threads on a CPU: picks each step's thread count

    def step_threads(self):
        """The context a step runs in: the thread count chosen for it (``--adapt-threads``), or as it is."""
        return self.threads.step() if self.threads is not None else contextlib.nullcontext()


def load_run_config(run_dir: Path) -> tuple[TrainConfig, GPTConfig]:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"--resume {run_dir}: no {CONFIG_FILE}; is it a gpt2lab run directory?")
    d = read_json(path)
    try:
        return TrainConfig(**d["train"]), GPTConfig(**d["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"--resume {run_dir}: bad {CONFIG_FILE} ({e})") from None


def run_config(cfg: TrainConfig, model_cfg: GPTConfig | None, resume: str | Path | None, train_overrides: dict,
               model_overrides: dict) -> tuple[TrainConfig, GPTConfig, Path | None]:
    """This run's configs (``cfg.out`` set to its directory) and the checkpoint it resumes from.

    A fresh run (checkpoint ``None``) takes the configs it is given, the
    default model if none.  A resumed one takes the configs saved in its
    directory with the overrides on top, refusing any that would change what
    is learned."""
    if resume is None:
        model_cfg = model_cfg or GPTConfig.from_preset(DEFAULT_PRESET, **DEFAULT_MODEL_OVERRIDES)
        run_dir = Path(cfg.out) if cfg.out else default_run_dir()
        return dataclasses.replace(cfg, out=str(run_dir)), model_cfg, None
    run_dir = Path(resume)
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: no such run directory; give the --out directory of an earlier run")
    saved_cfg, saved_model = load_run_config(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or not (ckpt / STATE_FILE).is_file():
        raise UserError(f"--resume {run_dir}: no checkpoint to resume from; start a new run instead")
    check_compatible(saved_cfg.to_dict(), {k: v for k, v in train_overrides.items() if k not in BATCH_LAYOUT},
                     "training", run_dir)
    check_compatible(saved_model.to_dict(), model_overrides, "model", run_dir)
    check_checkpoint_matches(ckpt, saved_model, run_dir)
    remove_stale_temporaries(run_dir)
    cfg = dataclasses.replace(saved_cfg, **{k: v for k, v in train_overrides.items() if k != "out"})
    cfg.out = str(run_dir)
    return cfg, saved_model, ckpt


def set_up(cfg: TrainConfig, model_cfg: GPTConfig, ckpt: Path | None, fit_vocab: bool, log, started: float,
           start=None) -> Run:
    """Join the other processes (if any), then load the tokenizer and the
    tokens, build the model and its optimizer, and restore them from
    ``ckpt`` when resuming.  ``fit_vocab``: size the output layer to the
    tokenizer.  Only rank 0 logs.

    Where a run's starting point comes from is two functions:
    :func:`run_tokenizer` (its tokenizer) and :func:`new_model` (its first
    weights); a run started from another model (``start``, a
    ``finetune.Start``: ``--init-from``) takes both from there."""
    from .data import parse_source
    from .finetune import check_train_only

    here = env_ranks()  # (rank, local rank, world size) under torchrun, else None
    device = resolve_device(cfg.device, here[1] if here else None)
    if cfg.deterministic:
        use_deterministic_kernels(device)
    ranks = start_ranks(device, cfg.backend)
    log = log if ranks.is_main else quiet  # only rank 0 speaks
    run_dir = Path(ranks.from_main(cfg.out))  # one run directory, rank 0's (its default has a timestamp)
    cfg.out = str(run_dir)
    if ckpt is not None:  # (rank 0 first, so that the error is printed once, not by every rank)
        ranks.main_first(lambda: check_global_batch(load_run_config(run_dir)[0], read_json(run_dir / CONFIG_FILE)
                                                    .get("world_size", 1), cfg, ranks.world_size, run_dir))
    torch.set_num_threads(cfg.threads or physical_cores())
    source = parse_source(cfg.data, cfg.text_field, cfg.hf_split)
    tokenizer = start.tokenizer if start is not None else run_tokenizer(cfg, source, ranks, ckpt)
    if fit_vocab:
        model_cfg = dataclasses.replace(model_cfg, d_vocab=tokenizer.n_vocab)  # fit the output layer to the tokenizer
    if tokenizer.n_vocab > model_cfg.d_vocab:
        raise UserError(f"the tokenizer has {tokenizer.n_vocab} tokens but --d-vocab is {model_cfg.d_vocab}; "
                        "leave --d-vocab unset to match the tokenizer")
    check_train_only(cfg.train_only, model_cfg.n_layers)  # before the run directory exists
    shards = ranks.main_first(lambda: prepare_data(cfg, source, tokenizer, model_cfg.n_ctx, ranks, fresh=ckpt is None))
    total_steps, tokens_per_step = count_steps(cfg, len(shards.train), model_cfg.n_ctx, ranks.world_size)
    model, optimizer = new_model(model_cfg, cfg, device, start.model if start is not None else None)
    sampler = WindowSampler(len(shards.train), model_cfg.n_ctx, cfg.batch_size, cfg.seed,
                            epoch_mode=cfg.epochs is not None, rank=ranks.rank, world_size=ranks.world_size,
                            grad_accum=cfg.grad_accum)
    run = Run(cfg, run_dir, device, ranks, tokenizer, shards, model, optimizer, sampler, total_steps, tokens_per_step,
              started, parent=start.parent.to_dict() if start is not None else None)
    if cfg.adapt_threads and device.type == "cpu":
        run.threads = ThreadChooser(torch.get_num_threads())
    if ckpt is not None:
        run.parent = read_json(run_dir / CONFIG_FILE).get("init_from")  # kept when config.json is rewritten
        restore(run, ckpt)
        if ranks.is_main:
            trim_metrics(run_dir / METRICS_FILE, run.step)
        log(f"resuming {run_dir} from step {run.step}")
    if ranks.is_main:
        write_run_config(run)
    if ckpt is None:
        on = f" on {ranks.world_size} processes ({device.type})" if ranks.distributed else ""
        log(f"run {run_dir}: {model.num_params():,} parameters, {len(shards.train):,} training tokens, "
            f"{tokens_per_step:,} tokens per step{on}, {total_steps} steps")
        if start is not None:
            log(f"starting from {start.parent.checkpoint} (weights sha256 {start.parent.sha256[:16]}...)")
    if run.parent or cfg.train_only != "all":
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log(f"training {trainable:,} of {model.num_params():,} parameters (--train-only {cfg.train_only})")
    run.step_model = ranks.data_parallel(model, cfg.loss_chunk, device)
    run.loss_fn = loss_function(model, cfg, device, forward=run.step_model)
    return run


def run_tokenizer(cfg: TrainConfig, source, ranks: Ranks, ckpt: Path | None):
    """A resumed run's own tokenizer; for a fresh one, ``cfg.tokenizer``
    (``char`` and ``bpe:N`` are built from the training documents by rank 0
    alone; the others load its result)."""
    from .data import iter_documents
    from .tokenizer import build_tokenizer, load_tokenizer

    if ckpt is not None:  # resume with the very tokenizer the run was trained with
        return load_tokenizer(read_json(ckpt / MODEL_META).get("tokenizer", {"kind": "gpt2"}))
    return load_tokenizer(ranks.main_first(
        lambda: build_tokenizer(cfg.tokenizer, lambda: iter_documents(source, "train")).to_dict(), share=True))


def prepare_data(cfg: TrainConfig, source, tokenizer, n_ctx: int, ranks: Ranks, fresh: bool):
    """The token shards (run by rank 0 first: it creates the run directory
    and fills the token cache the others read).  A fresh run whose data
    fails leaves no directory behind."""
    from .data import prepare_tokens

    run_dir = Path(cfg.out)
    created = fresh and not run_dir.exists()
    if fresh and ranks.is_main:
        prepare_run_dir(run_dir)
    try:
        shards = prepare_tokens(source, tokenizer, cfg.val_fraction, progress=cfg.progress and ranks.is_main)
        for name, toks in (("training", shards.train), ("validation", shards.val)):
            if len(toks) < n_ctx + 1:
                raise UserError(f"the {name} split of {cfg.data} has {len(toks)} tokens, fewer than one "
                                f"context window ({n_ctx + 1}); give more text or a smaller --n-ctx")
        return shards
    except BaseException:
        if ranks.is_main and created and not any(run_dir.iterdir()):
            run_dir.rmdir()  # leave nothing behind for a run that never started
        raise


def count_steps(cfg: TrainConfig, n_train_tokens: int, n_ctx: int, world_size: int) -> tuple[int, int]:
    """How many steps the run takes (``max_steps``, or fewer to stop after
    ``epochs``), and how many tokens each step trains on."""
    windows_per_step = cfg.batch_size * world_size * cfg.grad_accum  # the global batch
    total_steps = cfg.max_steps
    if cfg.epochs is not None:
        n_windows = (n_train_tokens - 1) // n_ctx
        total_steps = min(total_steps, math.ceil(cfg.epochs * n_windows / windows_per_step))
    return total_steps, windows_per_step * n_ctx


def new_model(model_cfg: GPTConfig, cfg: TrainConfig, device: torch.device,
              start: GPT | None = None) -> tuple[GPT, torch.optim.Optimizer]:
    """The model with fresh weights drawn from ``cfg.seed`` (or ``start``, a
    trained model, when fine-tuning), frozen as ``cfg.train_only`` says, and
    its optimizer, which keeps AdamW state only for what trains.
    (A resumed run then loads its checkpoint over both: see :func:`restore`.)"""
    from .finetune import freeze

    torch.manual_seed(cfg.seed)
    model = (start if start is not None else GPT(model_cfg)).to(device)
    model.train()
    freeze(model, cfg.train_only)
    return model, make_optimizer(model, cfg)


def restore(run: Run, ckpt: Path) -> None:
    """Load a checkpoint into a set-up run: the weights, the optimizer, the
    sampler's position, the random state and the step counters."""
    load_state_strict(run.model, read_safetensors(ckpt / MODEL_FILE), ckpt / MODEL_FILE)
    state = load_training_state(ckpt)
    run.optimizer.load_state_dict(state["optimizer"])
    for group in run.optimizer.param_groups:  # AdamW's implementation may change on resume; the state may not
        if "betas" in group:
            group.update(adamw_flags(run.cfg, run.device))
    run.sampler.load_state_dict(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    run.step, run.tokens = int(state["step"]), int(state["tokens"])
    run.elapsed_before = float(state.get("elapsed", 0.0))
    run.recent_losses = [float(x) for x in state.get("recent_losses", [])]
    run.checkpoint = ckpt


def write_run_config(run: Run) -> None:
    shards = run.shards
    write_json(run.run_dir / CONFIG_FILE, {"train": run.cfg.to_dict(), "model": run.model.cfg.to_dict(),
                                           "tokenizer": run.tokenizer.to_dict(), "data": shards.header["source"],
                                           "tokens": {"train": len(shards.train), "val": len(shards.val),
                                                      "cache": str(shards.folder),
                                                      "train_bytes_per_token": shards.train_bytes_per_token},
                                           "world_size": run.ranks.world_size,
                                           **({"init_from": run.parent} if run.parent else {})})


def quiet(*args, **kwargs) -> None:
    """The log of every rank but 0."""


# ---------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------


def default_run_dir() -> Path:
    base = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def prepare_run_dir(path: Path) -> None:
    """Create a fresh run directory, refusing one that already holds something."""
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--out {path} is a file; choose a directory")
        if (path / CONFIG_FILE).exists() or (path / CHECKPOINTS).exists():
            raise UserError(f"{path} already holds a training run; continue it with --resume {path} "
                            "or choose a new --out directory")
        if any(path.iterdir()):
            raise UserError(f"--out {path} is not empty; choose a new or empty directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".gpt2lab-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to --out {path}: {e.strerror}; choose another --out") from None


def trim_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after ``step`` (by a run killed after its last
    checkpoint), so a resumed run's log reads as one uninterrupted run."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_bytes_atomic(path, "".join(line + "\n" for line in keep).encode("utf-8"))


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:08d}"


def save_checkpoint(run_dir: Path, step: int, model: GPT, tokenizer, optimizer, sampler: WindowSampler,
                    extra: dict, keep: int) -> Path:
    """Write a complete checkpoint into a temporary directory, fsync it, then
    rename it into place: a crash at any moment leaves the previous
    checkpoints untouched and never a half-written one under a real name.
    Then delete all but the newest ``keep``.

    A checkpoint that cannot be written (a full disk, a file-size limit, a
    read-only folder) stops the run with a :class:`UserError` saying so; its
    temporary directory is removed and the older checkpoints stay as they were."""
    folder = Path(run_dir) / CHECKPOINTS
    final = step_dir(run_dir, step)
    tmp = folder / f".tmp-{final.name}-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        save_model(model, tokenizer, tmp)  # each file written atomically and fsynced
        state = {"step": step, "optimizer": optimizer.state_dict(), "sampler": sampler.state_dict(),
                 "torch_rng": torch.get_rng_state(), **extra}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_bytes_atomic(tmp / STATE_FILE, buffer.getbuffer())  # a view of the buffer's bytes, not a copy
        fsync_dir(tmp)
        if final.exists():  # the same step saved again (e.g. a resumed run that had nothing to do)
            discard(final)
        os.rename(tmp, final)
        fsync_dir(folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        kept = f"the last good checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise UserError(f"cannot write checkpoint {final.name} ({e.filename or folder}: {e.strerror}); {kept}; "
                        f"free some disk space (or fix the permissions) and continue with "
                        f"gpt2lab train --resume {run_dir}") from None
    steps = sorted((p for p in folder.iterdir() if re.fullmatch(r"step_\d+", p.name)), key=lambda p: p.name)
    for old in steps[:-keep]:
        discard(old)
    return final


def discard(checkpoint: Path) -> None:
    """Delete a checkpoint directory without ever leaving half of one under
    its real name (a crash in the middle of ``rmtree`` would): rename it to a
    temporary name first, then delete that."""
    doomed = checkpoint.with_name(f".tmp-deleting-{checkpoint.name}-{os.getpid()}")
    os.rename(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete what a killed run left half-written: ``checkpoints/.tmp-*``
    directories (a checkpoint being saved) and ``.*.tmp*`` files (an atomic
    write in progress).  None of them is ever read, so this only frees space."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / CHECKPOINTS):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.name.startswith(".tmp-") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(".") and ".tmp" in p.name and p.is_file():
                p.unlink(missing_ok=True)


def load_training_state(ckpt: Path) -> dict:
    path = ckpt / STATE_FILE
    if not path.is_file():
        raise UserError(f"checkpoint {ckpt} has no {STATE_FILE}; it cannot be resumed")
    return torch_load_safely(path, "resume only runs you trust, or start a new run")


# ---------------------------------------------------------------------------
# Resuming: the same run, or a refusal saying why not
# ---------------------------------------------------------------------------


# Fields that may change when resuming (they do not change what was learned so far).
RESUMABLE_CHANGES = {"max_steps", "epochs", "max_minutes", "log_every", "eval_every", "checkpoint_every",
                     "keep_checkpoints", "sample_tokens", "sample_temperature", "sample_top_k", "progress",
                     "device", "backend", "threads", "out", "on_nan", "spike_factor", "loss_chunk",
                     "autocast", "adamw", "compile", "deterministic", "adapt_threads"}
# May change when resuming as long as the global batch stays the same (e.g. on more processes).
BATCH_LAYOUT = {"batch_size", "grad_accum"}


def check_compatible(saved: dict, new: dict, what: str, run_dir: Path) -> None:
    changed = [k for k in new if k in saved and saved[k] != new[k] and k not in RESUMABLE_CHANGES]
    if changed:
        k = changed[0]
        raise UserError(f"--resume {run_dir}: {what} field {k} was {saved[k]!r}, now {new[k]!r}; "
                        "an incompatible config cannot resume this run (start a new --out instead)")


def check_checkpoint_matches(ckpt: Path, model_cfg: GPTConfig, run_dir: Path) -> None:
    """Refuse a checkpoint that does not belong to this run (copied in from
    another run, say): its model config and tokenizer must be the ones the
    run's ``config.json`` recorded.  Otherwise the weights would either fail
    to load with a puzzling shape error or, worse, load and be decoded with
    the wrong vocabulary."""
    meta = read_json(ckpt / MODEL_META)
    run_tokenizer = read_json(run_dir / CONFIG_FILE).get("tokenizer")
    saved = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    for k, v in model_cfg.to_dict().items():
        if saved.get(k) != v:
            raise UserError(f"--resume {run_dir}: checkpoint {ckpt.name} has model {k} {saved.get(k)!r} but the "
                            f"run was configured with {v!r}; it belongs to another run (move it out, or resume "
                            "the run it came from)")
    if run_tokenizer is not None and meta.get("tokenizer") != run_tokenizer:
        theirs = meta.get("tokenizer") if isinstance(meta.get("tokenizer"), dict) else {}
        differing = [k for k in {*theirs, *run_tokenizer} if theirs.get(k) != run_tokenizer.get(k)]
        k = "kind" if "kind" in differing else min(differing, default="kind")
        ours, other = run_tokenizer.get(k), theirs.get(k)
        what = f"{other!r} but the run was trained with {ours!r}" if len(repr(ours) + repr(other)) < 80 \
            else "that differs from the run's"  # a vocabulary or merge list: too long to print
        raise UserError(f"--resume {run_dir}: checkpoint {ckpt.name} has tokenizer {k} {what}; it belongs to "
                        "another run (move it out, or resume the run it came from)")


def check_global_batch(saved: TrainConfig, saved_world: int, cfg: TrainConfig, world: int, run_dir: Path) -> None:
    """A run may resume on another number of processes, or split its batch
    differently, but keeps its global batch: that is what fixes the windows
    each step trains on (see ``WindowSampler``) and so the rest of the curve."""
    before, now = saved.batch_size * saved_world * saved.grad_accum, cfg.batch_size * world * cfg.grad_accum
    if before != now:
        raise UserError(f"--resume {run_dir}: the global batch was {before} sequences ({saved.batch_size} per process "
                        f"x {saved_world} processes x {saved.grad_accum} accumulation steps), now it would be {now} "
                        f"({cfg.batch_size} x {world} x {cfg.grad_accum}); choose --batch-size and --grad-accum "
                        f"so that their product with the number of processes is {before}")
