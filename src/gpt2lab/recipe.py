"""The training recipe: every setting of a run, the learning-rate schedule, AdamW, and the loss it minimises.

``TrainConfig``'s defaults are the default recipe (see the README for how it
was measured).  The loop that uses all this is in ``train.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch

from .errors import UserError
from .hardware import AUTOCAST_CHOICES, autocast, autocast_dtype
from .model import GPT


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything about a training run except the model's shape (``GPTConfig``).

    The defaults are the default recipe: the best held-out bits per byte we
    measured for the same minutes of training on two CPU cores (the sweep in
    benchmarks/README.md; ``python -m benchmarks race`` runs it against
    nanoGPT's CPU recipe)."""

    # data
    data: str = "shakespeare"  # shakespeare, a file, a directory, or hf:DATASET[:CONFIG]
    text_field: str = "text"  # the field/column holding the text in .jsonl, .parquet and HF datasets
    hf_split: str = "train"  # the split of a Hugging Face dataset
    val_fraction: float = 0.1  # held-out tail of the tokens (not for shakespeare: whole plays)
    tokenizer: str = "bpe:4096"  # gpt2, char or bpe:N (built from the training documents), or a tokenizer JSON file
    # fine-tuning (see finetune.py)
    init_from: str | None = None  # start from a trained model: a run, a checkpoint or a Hugging Face GPT-2 directory
    train_only: str = "all"  # all, no-embeddings or last-N (the last N blocks and the final LayerNorm)
    # run
    out: str | None = None  # run directory; default runs/<timestamp>
    seed: int = 1337
    device: str = "auto"  # auto (cuda if available, else cpu), cpu, cuda, cuda:1, mps
    backend: str = "auto"  # with several processes: auto (nccl on cuda, gloo on cpu), gloo, nccl
    threads: int = 0  # torch CPU threads; 0: one per physical core
    adapt_threads: bool = False  # each step on 1 or --threads threads, whichever is faster now (hardware.ThreadChooser):
    # faster while other programs keep a core busy, but then the runs are no longer bit-for-bit reproducible
    # batch and optimisation
    batch_size: int = 16  # sequences per micro-step per process
    grad_accum: int = 1  # micro-steps whose gradients add up to one step
    # one step trains on batch_size x processes x grad_accum sequences (the global batch)
    lr: float = 8e-3  # peak learning rate
    min_lr: float = 3e-4  # floor of the cosine decay
    warmup_steps: int = 50
    weight_decay: float = 0.1
    decay_embeddings: bool = False  # also decay the (tied) token and position embeddings
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    optimizer: str = "muon"  # muon (Muon for the blocks' weight matrices, AdamW for the rest; muon.py) or adamw
    muon_momentum: float = 0.95  # Muon's Nesterov momentum
    # speed (see benchmarks/README.md); none of these changes what is learned beyond rounding
    loss_chunk: int = 1024  # rows of logits per chunk of the fused output layer + loss (0: plain, all at once)
    autocast: str = "auto"  # auto (bf16 on CUDA and CPUs with native bf16, else fp32), bf16, off
    adamw: str = "fused"  # AdamW implementation: fused, foreach, loop (fused/foreach fall back to loop where unsupported)
    compile: bool = False  # torch.compile the loss (slow to start; measured no faster on 2 CPU cores)
    deterministic: bool = False  # deterministic kernels everywhere, at a cost on GPUs (the CPU path always is; README)
    # when to stop (whichever comes first)
    max_steps: int = 350
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
        if self.optimizer not in OPTIMIZER_CHOICES:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZER_CHOICES)}, got {self.optimizer!r}")
        if not 0 <= self.muon_momentum < 1:
            raise UserError(f"--muon-momentum must be in [0, 1), got {self.muon_momentum!r}")
        if self.adamw not in ADAMW_CHOICES:
            raise UserError(f"--adamw must be one of {', '.join(ADAMW_CHOICES)}, got {self.adamw!r}")
        from .finetune import check_train_only

        check_train_only(self.train_only)
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must be between 0 and 1, got {self.val_fraction!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The default model: the `mini` preset as it is (2 layers, d_model 256, a
# 256-token context), chosen by measurement for CPU training (the sweep in
# benchmarks/README.md).
DEFAULT_PRESET = "mini"
DEFAULT_MODEL_OVERRIDES: dict = {}


# ---------------------------------------------------------------------------
# Learning-rate schedule and optimizer
# ---------------------------------------------------------------------------


def lr_at(step: int, cfg: TrainConfig, total_steps: int, minutes: float | None = None) -> float:
    """Linear warmup from ~0 to ``lr`` over ``warmup_steps``, then a cosine
    decay from ``lr`` to ``min_lr`` at ``total_steps``.  ``step`` counts from 0.

    **Time as a budget.**  With ``max_minutes``, the run stops when time is
    up, usually long before ``total_steps``: a schedule counted in steps
    would be cut off near its peak.  So the decay's progress is the larger of
    the steps' share and the time's share (``minutes`` of training so far out
    of ``max_minutes``): the cosine reaches ``min_lr`` when the time runs
    out, however many steps fit in it."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    if cfg.max_minutes is not None and minutes is not None:
        progress = max(progress, min(minutes / cfg.max_minutes, 1.0))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model: GPT, cfg: TrainConfig) -> list[dict]:
    """Weight decay on matrices only: the weight matrices (``W_*``, 2 or more
    dimensions), except the embeddings unless ``decay_embeddings``.  Biases
    (even the per-head ``b_Q``, which is 2-D) and LayerNorm scales/shifts are
    never decayed: pulling them toward zero only fights the normalisation."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # frozen (--train-only): no AdamW state at all
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


OPTIMIZER_CHOICES = ("adamw", "muon")
BLOCK_MATRICES = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")


def make_optimizer(model: GPT, cfg: TrainConfig):
    """AdamW over every parameter that trains, or (``--optimizer muon``) Muon
    over the blocks' weight matrices and AdamW over the rest (``muon.py``)."""
    device = next(model.parameters()).device
    groups = param_groups(model, cfg)
    matrices = take_block_matrices(model, groups) if cfg.optimizer == "muon" else None
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, **adamw_flags(cfg, device))
    if matrices is None:
        return adamw
    from .muon import Muon, Optimizers

    dtype = autocast_dtype(device, cfg.autocast) or torch.float32
    return Optimizers(adamw=adamw, muon=Muon([matrices], lr=cfg.lr, momentum=cfg.muon_momentum,
                                             weight_decay=cfg.weight_decay,
                                             matmul_dtype=str(dtype).removeprefix("torch.")))


def take_block_matrices(model: GPT, groups: list[dict]) -> dict:
    """Move the blocks' weight matrices out of AdamW's ``groups`` into one
    Muon group (with their names, which say how each is a 2-D map)."""
    names = {p: n for n, p in model.named_parameters()}
    is_muon = {p: n.rsplit(".", 1)[-1] in BLOCK_MATRICES for p, n in names.items()}
    params = [p for g in groups for p in g["params"] if is_muon[p]]
    for g in groups:
        g["params"] = [p for p in g["params"] if not is_muon[p]]
    return {"params": params, "names": [names[p] for p in params], "name": "muon"}


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
