"""Training a GPT-2: the loop, its schedule, its data sampler, its checkpoints.

One step of training:

1. draw ``batch_size`` windows of ``n_ctx + 1`` tokens from the training
   tokens (inputs are the first ``n_ctx``, targets the same shifted by one);
2. compute the mean cross-entropy of predicting each next token and its
   gradient, ``grad_accum`` times, adding the gradients up;
3. clip the gradient's global norm to ``grad_clip``;
4. take an AdamW step at the learning rate of this step: a linear warmup,
   then a cosine decay down to ``min_lr``.

Every ``eval_every`` steps the model is scored on a fixed set of validation
windows (loss and bits per byte), ``metrics.jsonl`` and ``loss.png`` are
updated; every ``checkpoint_every`` steps (and at the end) a checkpoint is
written atomically.  Resuming restores the weights, the optimizer, the
sampler's position and every random state, so a resumed run produces the
very same losses as one that was never interrupted.

What can go wrong, and what happens then:

* killed outright (SIGKILL, power cut): the newest complete checkpoint is
  intact, at most ``checkpoint_every`` steps are lost, ``--resume`` goes on;
* Ctrl-C or SIGTERM: the step in progress finishes, a checkpoint is written,
  and the run stops with a message saying how to resume (:class:`StopOnSignal`);
* a checkpoint that cannot be written (disk full): the run stops saying so,
  the earlier checkpoints untouched;
* a NaN or infinite loss or gradient: the run stops, keeping the last good
  checkpoint, or with ``on_nan="skip"`` skips that step; a loss far above the
  recent mean (``spike_factor``) is reported on stderr and in the metrics.

A run directory::

    RUN/
      config.json          the resolved TrainConfig and GPTConfig
      metrics.jsonl        one JSON object per logged step
      loss.png             train/val loss and learning rate against tokens seen
      checkpoints/
        step_00000500/
          model.safetensors   weights (see checkpoint.py)
          model.json          model config + tokenizer
          training_state.pt   optimizer, step, sampler and RNG state (tensors and plain containers only)
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CHECKPOINTS, MODEL_META, fsync_dir, latest_checkpoint, load_state_strict, \
    read_json, read_safetensors, MODEL_FILE, save_model, torch_load_safely, write_bytes_atomic, write_json
from .distributed import Ranks, env_ranks, start as start_ranks
from .errors import Stopped, UserError
from .hardware import AUTOCAST_CHOICES, autocast, autocast_dtype, physical_cores
from .model import GPT, GPTConfig

STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything about a training run except the model's shape (``GPTConfig``).

    The defaults are the default recipe: the best validation bits per byte we
    measured in about five minutes on two CPU cores (see the README)."""

    # data
    data: str = "shakespeare"  # shakespeare, a file, a directory, or hf:DATASET[:CONFIG]
    text_field: str = "text"  # the field/column holding the text in .jsonl, .parquet and HF datasets
    hf_split: str = "train"  # the split of a Hugging Face dataset
    val_fraction: float = 0.1  # held-out tail of the tokens (not for shakespeare: whole plays)
    tokenizer: str = "bpe:4096"  # gpt2, char or bpe:N (built from the training documents), or a tokenizer JSON file
    # run
    out: str | None = None  # run directory; default runs/<timestamp>
    seed: int = 1337
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:1, mps
    backend: str = "auto"  # with several processes: auto (nccl on cuda, gloo on cpu), gloo, nccl
    threads: int = 0  # torch CPU threads; 0: one per physical core
    # batch and optimisation
    batch_size: int = 16  # sequences per micro-step per process
    grad_accum: int = 1  # micro-steps whose gradients add up to one step
    # one step trains on batch_size x processes x grad_accum sequences (the global batch)
    lr: float = 3e-3  # peak learning rate
    min_lr: float = 3e-4  # floor of the cosine decay
    warmup_steps: int = 50
    weight_decay: float = 0.1
    decay_embeddings: bool = False  # also decay the (tied) token and position embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    # speed (see benchmarks/README.md); none of these changes what is learned beyond rounding
    loss_chunk: int = 1024  # rows of logits per chunk of the fused output layer + loss (0: plain, all at once)
    autocast: str = "auto"  # auto (bf16 on CUDA and CPUs with native bf16, else fp32), bf16, off
    adamw: str = "fused"  # AdamW implementation: fused, foreach, loop (fused/foreach fall back to loop where unsupported)
    compile: bool = False  # torch.compile the loss (slow to start; measured no faster on 2 CPU cores)
    # when to stop (whichever comes first)
    max_steps: int = 700
    epochs: float | None = None  # passes over the training windows, sampled without replacement
    max_minutes: float | None = None  # wall-clock limit
    # logging, evaluation, checkpoints
    log_every: int = 1
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    sample_tokens: int = 200  # tokens of text generated at the end (0: none)
    sample_temperature: float = 0.8
    sample_top_k: int = 40
    progress: bool = True  # tqdm progress bar
    # numerical guards
    on_nan: str = "stop"  # a NaN/Inf loss or gradient: stop (keeping the last checkpoint) or skip the step
    spike_factor: float = 3.0  # report a loss above this many times the mean of the last 20 (0: never)

    def __post_init__(self) -> None:
        positive_int = ("batch_size", "grad_accum", "max_steps", "log_every", "eval_every", "eval_batches",
                        "checkpoint_every", "keep_checkpoints")
        for name in positive_int:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        for name in ("warmup_steps", "sample_tokens", "loss_chunk", "threads", "sample_top_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise UserError(f"--{name.replace('_', '-')} must be a non-negative integer, got {v!r}")
        for name in ("lr",):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise UserError(f"--{name.replace('_', '-')} must be a positive number, got {v!r}")
        for name in ("min_lr", "weight_decay", "grad_clip", "sample_temperature"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise UserError(f"--{name.replace('_', '-')} must be a non-negative number, got {v!r}")
        if self.min_lr > self.lr:
            raise UserError(f"--min-lr ({self.min_lr}) must not exceed --lr ({self.lr})")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"--{name} must be in [0, 1), got {getattr(self, name)!r}")
        for name in ("epochs", "max_minutes"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {v!r}")
        if self.on_nan not in ("stop", "skip"):
            raise UserError(f"--on-nan must be stop or skip, got {self.on_nan!r}")
        if not (math.isfinite(self.spike_factor) and (self.spike_factor == 0 or self.spike_factor > 1)):
            raise UserError(f"--spike-factor must be above 1 (or 0 to turn spike reports off), got {self.spike_factor!r}")
        from .distributed import BACKENDS

        if self.backend not in BACKENDS:
            raise UserError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.autocast not in AUTOCAST_CHOICES:
            raise UserError(f"--autocast must be one of {', '.join(AUTOCAST_CHOICES)}, got {self.autocast!r}")
        if self.adamw not in ADAMW_CHOICES:
            raise UserError(f"--adamw must be one of {', '.join(ADAMW_CHOICES)}, got {self.adamw!r}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must be between 0 and 1, got {self.val_fraction!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The default model: the `mini` preset (2 layers, d_model 256) with a shorter
# context, chosen by measurement for CPU training (see the README).
DEFAULT_PRESET = "mini"
DEFAULT_MODEL_OVERRIDES = dict(n_ctx=128)

# Fields that may change when resuming (they do not change what was learned so far).
RESUMABLE_CHANGES = {"max_steps", "epochs", "max_minutes", "log_every", "eval_every", "checkpoint_every",
                     "keep_checkpoints", "sample_tokens", "sample_temperature", "sample_top_k", "progress",
                     "device", "backend", "threads", "out", "on_nan", "spike_factor", "loss_chunk",
                     "autocast", "adamw", "compile"}
# May change when resuming as long as the global batch stays the same (e.g. on more processes).
BATCH_LAYOUT = {"batch_size", "grad_accum"}

# How many recent losses the spike detector averages, and how many it needs first.
SPIKE_WINDOW, SPIKE_MIN_HISTORY = 20, 5


# ---------------------------------------------------------------------------
# Learning-rate schedule and optimizer
# ---------------------------------------------------------------------------


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup from ~0 to ``lr`` over ``warmup_steps``, then a cosine
    decay from ``lr`` to ``min_lr`` at ``total_steps``.  ``step`` counts from 0."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: GPT, cfg: TrainConfig) -> list[dict]:
    """Weight decay on matrices only: the weight matrices (``W_*``, 2 or more
    dimensions), except the embeddings unless ``decay_embeddings``.  Biases
    (even the per-head ``b_Q``, which is 2-D) and LayerNorm scales/shifts are
    never decayed: pulling them toward zero only fights the normalisation."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_embedding = name in ("embed.W_E", "pos_embed.W_pos")
        is_matrix = p.dim() >= 2 and name.rsplit(".", 1)[-1].startswith("W_")
        if is_matrix and (cfg.decay_embeddings or not is_embedding):
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


ADAMW_CHOICES = ("fused", "foreach", "loop")


def adamw_flags(cfg: TrainConfig, device: torch.device) -> dict:
    """``fused``: one kernel updates every parameter (CPU and CUDA, fp32);
    ``foreach``: one op per step over lists of tensors; ``loop``: one op per
    parameter (PyTorch's default on CPU).  The same arithmetic in each."""
    fused = cfg.adamw == "fused" and device.type in ("cpu", "cuda")
    return {"fused": fused or None, "foreach": (cfg.adamw == "foreach") or (False if fused else None)}


def make_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.AdamW:
    device = next(model.parameters()).device
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                             **adamw_flags(cfg, device))


def loss_function(model: GPT, cfg: TrainConfig, device: torch.device, forward=None):
    """The training step's ``loss(x, y)``, with this run's fast-path settings
    applied: the chunked output layer, autocast and ``torch.compile``.
    ``forward(x, y)``: what computes the loss (the data-parallel wrapper when
    there is one); default ``model.loss`` with ``cfg.loss_chunk``."""
    dtype = autocast_dtype(device, cfg.autocast)
    forward = forward or functools.partial(model.loss, chunk_size=cfg.loss_chunk)
    if cfg.compile:
        forward = torch.compile(forward)

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            return forward(x, y)

    return loss


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------


class WindowSampler:
    """Chooses where the windows of each step start.

    * Random mode (default): each window starts at a uniformly random token,
      drawn from a seeded ``torch.Generator``.
    * Epoch mode (``epochs`` set): the tokens are cut into non-overlapping
      windows and every epoch visits each exactly once, in an order given by
      a permutation seeded with ``(seed, epoch)``.

    A step trains on a global batch of ``batch_size x world_size x
    grad_accum`` windows.  They are drawn together, as if by one process;
    then each rank takes its own slice of each micro-step.  So which windows
    a step sees depends on the global batch only, never on how it is split
    over processes and micro-steps: the training curve is the same on one
    process or eight, no two ranks ever share a window within an epoch, and
    the sampler's state (epoch, position, generator) means the same thing on
    any number of processes, so a checkpoint resumes on a different number.
    That state is saved in checkpoints and restored exactly."""

    def __init__(self, n_tokens: int, n_ctx: int, batch_size: int, seed: int, epoch_mode: bool = False,
                 rank: int = 0, world_size: int = 1, grad_accum: int = 1):
        self.n_tokens, self.n_ctx, self.batch_size = n_tokens, n_ctx, batch_size
        self.seed, self.epoch_mode, self.rank, self.world_size = seed, epoch_mode, rank, world_size
        self.grad_accum = grad_accum
        self.n_windows = (n_tokens - 1) // n_ctx  # non-overlapping windows of n_ctx + 1 tokens
        self.epoch, self.position = 0, 0
        self.generator = torch.Generator().manual_seed(seed)
        self._perm: torch.Tensor | None = None

    def permutation(self) -> torch.Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._perm = torch.randperm(self.n_windows, generator=g)
        return self._perm

    def draw(self, count: int) -> torch.Tensor:
        """Start offsets of the next ``count`` windows, for all ranks together: ``(count,)``."""
        if not self.epoch_mode:
            return torch.randint(0, self.n_tokens - self.n_ctx, (count,), generator=self.generator)
        picked, have = [], 0
        while have < count:
            perm = self.permutation()
            take = min(count - have, self.n_windows - self.position)
            picked.append(perm[self.position:self.position + take])
            self.position += take
            have += take
            if self.position == self.n_windows:  # epoch done: the next one reshuffles
                self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        return torch.cat(picked) * self.n_ctx

    def next_step(self) -> list[torch.Tensor]:
        """This process's window starts for each micro-step of the next step:
        ``grad_accum`` tensors of shape ``(batch_size,)``."""
        starts = self.draw(self.batch_size * self.world_size * self.grad_accum)
        # (grad_accum, world_size, batch_size): micro-step m of rank r is starts[m, r]
        return list(starts.view(self.grad_accum, self.world_size, self.batch_size)[:, self.rank])

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.position / max(self.n_windows, 1)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None
        self.generator.set_state(state["generator"])


def get_batch(tokens: np.ndarray, starts: torch.Tensor, n_ctx: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets ``(batch, n_ctx)`` for windows starting at ``starts``."""
    rows = np.stack([np.asarray(tokens[s:s + n_ctx + 1], dtype=np.int64) for s in starts.tolist()])
    xy = torch.from_numpy(rows)  # (batch, n_ctx + 1)
    return xy[:, :-1].to(device), xy[:, 1:].to(device)


def eval_starts(n_tokens: int, n_ctx: int, count: int) -> torch.Tensor:
    """A fixed, evenly spread set of validation windows (no randomness, so
    evaluating never disturbs the training random streams)."""
    last = n_tokens - n_ctx - 1
    if count == 1 or last <= 0:
        return torch.zeros(count, dtype=torch.long)
    return torch.linspace(0, last, count).round().long()


@torch.no_grad()
def evaluate(model: GPT, val: np.ndarray, cfg: TrainConfig, n_ctx: int, device, bytes_per_token: float,
             ranks: Ranks | None = None) -> dict:
    """Mean validation loss over the fixed windows, and bits per byte.

    ``eval_batches`` global batches of windows, like the training steps; with
    several processes each rank scores every ``world_size``-th batch and the
    sums are added up, so the result does not depend on the number of ranks."""
    ranks = ranks or Ranks()
    was_training = model.training
    model.eval()
    starts = eval_starts(len(val), n_ctx, cfg.eval_batches * cfg.batch_size * ranks.world_size)
    batches = starts.split(cfg.batch_size)
    total = 0.0
    for s in batches[ranks.rank::ranks.world_size]:
        x, y = get_batch(val, s, n_ctx, device)
        total += float(model.loss(x, y, chunk_size=cfg.loss_chunk))
    model.train(was_training)
    loss = ranks.sum([total], device)[0] / len(batches)
    # bits per byte = total bits / total bytes = (nats per token / ln 2) / (bytes per token)
    return {"val_loss": loss, "val_bpb": loss / math.log(2) / bytes_per_token}


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
        write_bytes_atomic(tmp / STATE_FILE, buffer.getvalue())
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
# The training run
# ---------------------------------------------------------------------------


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class RunResult:
    run_dir: Path
    step: int
    tokens: int
    metrics: dict  # the last logged metrics
    checkpoint: Path | None
    stopped_by: str
    sample: str | None = None
    rank: int = 0  # which process returned this (only rank 0's is worth printing)


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device this process trains on.  ``auto``: CUDA if there is a GPU,
    else the CPU.  With several processes on a machine (``local_rank`` set),
    ``cuda`` means this process's own GPU, ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use cpu, cuda, mps or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available; use --device cpu")
    if device.type == "cuda" and local_rank is not None:
        if device.index is not None:
            raise UserError(f"--device {name} with torchrun: give --device cuda (or auto), "
                            "each process then takes the GPU of its LOCAL_RANK")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process LOCAL_RANK {local_rank} has no GPU: this machine has "
                            f"{torch.cuda.device_count()}; start at most that many processes per machine")
        device = torch.device("cuda", local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS is not available; use --device cpu")
    return device


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


class StopOnSignal:
    """Turn SIGINT (Ctrl-C) and SIGTERM (what ``kill`` and job schedulers
    send) into a request that the loop checks between steps, so a run
    asked to stop finishes its step, writes a checkpoint and exits cleanly
    instead of dying mid-step.  A second signal stops at once
    (``KeyboardInterrupt``); the checkpoints on disk stay valid either way,
    since each is written atomically.  Outside the main thread (where Python
    cannot install handlers) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def restore(self) -> None:
        """Put back the handlers that were there before (Python's default turns Ctrl-C into KeyboardInterrupt)."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


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


def quiet(*args, **kwargs) -> None:
    """The log of every rank but 0."""


def load_run_config(run_dir: Path) -> tuple[TrainConfig, GPTConfig]:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"--resume {run_dir}: no {CONFIG_FILE}; is it a gpt2lab run directory?")
    d = read_json(path)
    try:
        return TrainConfig(**d["train"]), GPTConfig(**d["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"--resume {run_dir}: bad {CONFIG_FILE} ({e})") from None


def train(cfg: TrainConfig, model_cfg: GPTConfig | None = None, resume: str | Path | None = None,
          train_overrides: dict | None = None, model_overrides: dict | None = None, log=print,
          on_step=None) -> RunResult:
    """Run (or resume) a training run.  Returns where it stopped.

    With ``resume``, the run's saved config is used, with ``train_overrides``
    and ``model_overrides`` (what the user set explicitly) applied on top;
    changing anything but the stopping rule and the logging is refused.
    ``on_step(step)`` is called after every step (tests use it to simulate a crash).

    Started by torchrun (``WORLD_SIZE`` set), it joins the process group and
    trains as one rank of a data-parallel job (see ``distributed.py``); the
    caller ends the group with ``distributed.stop()`` (the CLI does)."""
    from .data import iter_documents, parse_source, prepare_tokens
    from .tokenizer import build_tokenizer, load_tokenizer

    start = time.monotonic()
    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise UserError(f"--resume {run_dir}: no such run directory; give the --out directory of an earlier run")
        saved_cfg, saved_model = load_run_config(run_dir)
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None or not (ckpt / STATE_FILE).is_file():
            raise UserError(f"--resume {run_dir}: no checkpoint to resume from; start a new run instead")
        check_compatible(saved_cfg.to_dict(), {k: v for k, v in (train_overrides or {}).items()
                                               if k not in BATCH_LAYOUT}, "training", run_dir)
        check_compatible(saved_model.to_dict(), model_overrides or {}, "model", run_dir)
        check_checkpoint_matches(ckpt, saved_model, run_dir)
        remove_stale_temporaries(run_dir)
        cfg = dataclasses.replace(saved_cfg, **{k: v for k, v in (train_overrides or {}).items() if k != "out"})
        cfg.out = str(run_dir)
        model_cfg = saved_model
    else:
        ckpt = None
        model_cfg = model_cfg or GPTConfig.from_preset(DEFAULT_PRESET, **DEFAULT_MODEL_OVERRIDES)
        run_dir = Path(cfg.out) if cfg.out else default_run_dir()
        cfg = dataclasses.replace(cfg, out=str(run_dir))

    here = env_ranks()  # (rank, local rank, world size) under torchrun, else None
    device = resolve_device(cfg.device, here[1] if here else None)
    ranks = start_ranks(device, cfg.backend)
    if not ranks.is_main:
        log = quiet  # only rank 0 speaks
    run_dir = Path(ranks.from_main(str(run_dir)))  # one run directory, rank 0's (its default has a timestamp)
    cfg.out = str(run_dir)
    if resume is not None:  # (rank 0 first, so that the error is printed once, not by every rank)
        ranks.main_first(lambda: check_global_batch(saved_cfg, read_json(run_dir / CONFIG_FILE).get("world_size", 1),
                                                    cfg, ranks.world_size, run_dir))
    torch.set_num_threads(cfg.threads or physical_cores())
    source = parse_source(cfg.data, cfg.text_field, cfg.hf_split)
    if ckpt is not None:  # resume with the very tokenizer the run was trained with
        tokenizer = load_tokenizer(read_json(ckpt / MODEL_META).get("tokenizer", {"kind": "gpt2"}))
    else:  # char, bpe:N: built from the training documents, by rank 0 alone (the others load its result)
        tokenizer = load_tokenizer(ranks.main_first(
            lambda: build_tokenizer(cfg.tokenizer, lambda: iter_documents(source, "train")).to_dict(), share=True))
    if resume is None and "d_vocab" not in (model_overrides or {}):
        model_cfg = dataclasses.replace(model_cfg, d_vocab=tokenizer.n_vocab)  # fit the output layer to the tokenizer
    if tokenizer.n_vocab > model_cfg.d_vocab:
        raise UserError(f"the tokenizer has {tokenizer.n_vocab} tokens but --d-vocab is {model_cfg.d_vocab}; "
                        "leave --d-vocab unset to match the tokenizer")

    created = resume is None and not run_dir.exists()
    n_ctx = model_cfg.n_ctx

    def prepare():  # rank 0 first: it creates the run directory and fills the token cache the others read
        if resume is None and ranks.is_main:
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

    shards = ranks.main_first(prepare)
    train_tokens, val_tokens = shards.train, shards.val

    windows_per_step = cfg.batch_size * ranks.world_size * cfg.grad_accum  # the global batch
    tokens_per_step = windows_per_step * n_ctx
    total_steps = cfg.max_steps
    if cfg.epochs is not None:
        n_windows = (len(train_tokens) - 1) // n_ctx
        total_steps = min(total_steps, math.ceil(cfg.epochs * n_windows / windows_per_step))

    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    model.train()
    optimizer = make_optimizer(model, cfg)
    sampler = WindowSampler(len(train_tokens), n_ctx, cfg.batch_size, cfg.seed, epoch_mode=cfg.epochs is not None,
                            rank=ranks.rank, world_size=ranks.world_size, grad_accum=cfg.grad_accum)
    step, tokens_seen, elapsed_before = 0, 0, 0.0
    recent_losses: list[float] = []  # the spike detector's window
    if ckpt is not None:
        load_state_strict(model, read_safetensors(ckpt / MODEL_FILE), ckpt / MODEL_FILE)
        state = load_training_state(ckpt)
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:  # the implementation may change on resume; the state may not
            group.update(adamw_flags(cfg, device))
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, tokens_seen = int(state["step"]), int(state["tokens"])
        elapsed_before = float(state.get("elapsed", 0.0))
        recent_losses = [float(x) for x in state.get("recent_losses", [])]
        if ranks.is_main:
            trim_metrics(run_dir / METRICS_FILE, step)
        log(f"resuming {run_dir} from step {step}")
    if ranks.is_main:
        write_json(run_dir / CONFIG_FILE, {"train": cfg.to_dict(), "model": model_cfg.to_dict(),
                                           "tokenizer": tokenizer.to_dict(), "data": shards.header["source"],
                                           "tokens": {"train": len(train_tokens), "val": len(val_tokens),
                                                      "cache": str(shards.folder)},
                                           "world_size": ranks.world_size})
    if resume is None:
        on = f" on {ranks.world_size} processes ({device.type})" if ranks.distributed else ""
        log(f"run {run_dir}: {model.num_params():,} parameters, {len(train_tokens):,} training tokens, "
            f"{tokens_per_step:,} tokens per step{on}, {total_steps} steps")
    step_model = ranks.data_parallel(model, cfg.loss_chunk, device)  # step_model(x, y): the loss, synced
    loss_fn = loss_function(model, cfg, device, forward=step_model)

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=step, desc="training", disable=not (cfg.progress and ranks.is_main),
               dynamic_ncols=True, file=sys.stderr)
    metrics_file = open(run_dir / METRICS_FILE, "a", encoding="utf-8") if ranks.is_main else None
    last_ckpt, last_metrics, stopped_by = ckpt, {}, "max_steps"
    if ckpt is not None and ranks.is_main:
        from .plots import read_metrics

        for r in read_metrics(run_dir) if (run_dir / METRICS_FILE).is_file() else []:
            last_metrics.update(r)
    extra = lambda: {"step": step, "tokens": tokens_seen, "elapsed": elapsed_before + time.monotonic() - start,  # noqa: E731
                     "recent_losses": list(recent_losses)}
    run_start = time.monotonic()
    window_start, window_tokens = time.monotonic(), 0
    warn = lambda message: tqdm.write(f"warning: {message}", file=sys.stderr)  # noqa: E731 - above the bar
    if not ranks.is_main:
        warn = quiet
    stop = StopOnSignal()
    try:
        stop.install()
        while True:
            if step >= total_steps:
                stopped_by = "epochs" if cfg.epochs is not None and total_steps < cfg.max_steps else "max_steps"
                break
            # All ranks stop at the same step, or the others would wait for them forever:
            # clocks differ, and a signal may reach only some ranks.
            out_of_time, signalled = ranks.any([cfg.max_minutes is not None and (time.monotonic() - run_start) / 60
                                                >= cfg.max_minutes, stop.signum is not None], device)
            if out_of_time:
                stopped_by = "max_minutes"
                break
            if signalled:
                stop.signum = stop.signum or signal.SIGTERM  # a rank that was not signalled stops as if it were
                stopped_by = signal.Signals(stop.signum).name
                break
            lr = lr_at(step, cfg, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro, starts in enumerate(sampler.next_step()):
                x, y = get_batch(train_tokens, starts, n_ctx, device)
                with ranks.sync_gradients(step_model, now=micro == cfg.grad_accum - 1):
                    loss = loss_fn(x, y)
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.item()
            loss_value = ranks.sum([loss_sum], device)[0] / (cfg.grad_accum * ranks.world_size)  # global mean
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0
                                                       else float("inf"))
            finite = math.isfinite(loss_value) and math.isfinite(float(grad_norm))
            if not finite and cfg.on_nan == "stop":
                where = f"; the last good checkpoint is {last_ckpt}" if last_ckpt else "; no checkpoint was written"
                raise TrainingDiverged(f"loss became {loss_value} at step {step + 1} (gradient norm {float(grad_norm)}), "
                                       f"training stopped{where}; try a lower --lr, or --on-nan skip")
            if finite:
                optimizer.step()
            else:  # --on-nan skip: drop this step's gradient, leave the weights and the optimizer as they were
                warn(f"step {step + 1}: loss {loss_value}, gradient norm {float(grad_norm)}; step skipped")
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            window_tokens += tokens_per_step
            bar.update(1)
            now = time.monotonic()
            tok_s = window_tokens / max(now - window_start, 1e-9)
            row = None
            spike = (finite and cfg.spike_factor > 0 and len(recent_losses) >= SPIKE_MIN_HISTORY
                     and loss_value > cfg.spike_factor * sum(recent_losses) / len(recent_losses))
            if spike:
                warn(f"step {step}: loss spike, {loss_value:.4f} is more than {cfg.spike_factor:g} times the mean "
                     f"of the last {len(recent_losses)} steps ({sum(recent_losses) / len(recent_losses):.4f})")
            if finite:
                recent_losses = (recent_losses + [loss_value])[-SPIKE_WINDOW:]
            if step % cfg.log_every == 0 or step == total_steps or spike or not finite:
                row = {"step": step, "tokens": tokens_seen, "loss": loss_value, "lr": lr,
                       "tokens_per_sec": round(tok_s, 1)}
                if spike:
                    row["spike"] = True
                if not finite:  # no "loss" (JSON has no NaN); the plots skip the point
                    del row["loss"]
                    row["skipped"] = f"loss {loss_value}, gradient norm {float(grad_norm)}"
                window_start, window_tokens = now, 0
            if step % cfg.eval_every == 0 or step == total_steps:
                row = row or {"step": step, "tokens": tokens_seen, "loss": loss_value, "lr": lr,
                              "tokens_per_sec": round(tok_s, 1)}
                row.update(evaluate(model, val_tokens, cfg, n_ctx, device, shards.val_bytes_per_token, ranks))
            if row is not None:
                last_metrics = {**last_metrics, **row}
            if row is not None and ranks.is_main:
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                bar.set_postfix_str(f"loss {loss_value:.3f} lr {lr:.1e} {tok_s:,.0f} tok/s"
                                    + (f" val {row['val_loss']:.3f}" if "val_loss" in row else ""))
                if "val_loss" in row:
                    refresh_plot(run_dir)
            if step % cfg.checkpoint_every == 0:
                last_ckpt = save_checkpoint(run_dir, step, model, tokenizer, optimizer, sampler, extra(),
                                            cfg.keep_checkpoints) if ranks.is_main else step_dir(run_dir, step)
            if on_step is not None:
                on_step(step)
        if last_ckpt is None or last_ckpt.name != step_dir(run_dir, step).name:
            last_ckpt = save_checkpoint(run_dir, step, model, tokenizer, optimizer, sampler, extra(),
                                        cfg.keep_checkpoints) if ranks.is_main else step_dir(run_dir, step)
    finally:
        stop.restore()
        if metrics_file is not None:
            metrics_file.close()
        bar.close()
    if stop.signum is not None:
        raise Stopped(f"stopped by {stopped_by} at step {step}, checkpoint {last_ckpt} saved; continue with: "
                      f"gpt2lab train{f' --nproc {ranks.world_size}' if ranks.world_size > 1 else ''} --resume {run_dir}",
                      stop.signum)
    if ranks.from_main("val_loss" not in last_metrics or last_metrics.get("step") != step):  # all ranks, or none
        row = {"step": step, "tokens": tokens_seen}
        row.update(evaluate(model, val_tokens, cfg, n_ctx, device, shards.val_bytes_per_token, ranks))
        if ranks.is_main:
            with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
        last_metrics = {**last_metrics, **row}
    if ranks.is_main:
        refresh_plot(run_dir)
    result = RunResult(run_dir, step, tokens_seen, last_metrics, last_ckpt, stopped_by, rank=ranks.rank)
    if cfg.sample_tokens > 0 and ranks.is_main:
        from .generate import sample

        g = torch.Generator().manual_seed(cfg.seed)
        ids = sample(model, [tokenizer.eot_token], cfg.sample_tokens, cfg.sample_temperature,
                     cfg.sample_top_k or None, generator=g)
        result.sample = tokenizer.decode(ids)
    return result


def refresh_plot(run_dir: Path) -> None:
    from .plots import plot_runs

    try:
        plot_runs([run_dir], Path(run_dir) / "loss.png")
    except UserError:
        pass  # a picture is never worth stopping a run for
