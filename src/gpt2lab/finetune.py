"""Starting from a trained model: fine-tuning, and freezing part of it.

``gpt2lab train --init-from PATH`` trains a model that already knows
something (GPT-2's own weights, or a run of yours) on new text.  PATH is
anything ``--model`` takes elsewhere: a Hugging Face GPT-2 directory, a
gpt2lab run (its latest checkpoint) or a checkpoint directory.

What comes from PATH and what may change:

* the model's shape and its tokenizer come from PATH: a flag that would
  contradict them (``--d-model 128`` on a ``gpt2``, ``--tokenizer char`` on a
  model trained with BPE) is refused, naming the field, since the weights
  only mean something with the shape and the token ids they were trained on;
* two fields can be honoured safely: ``--dropout`` (a training-time setting,
  not part of the weights) and a *smaller* ``--n-ctx``, which keeps the first
  ``n_ctx`` learned positions (:meth:`GPT.crop_context`);
* the optimizer starts fresh: AdamW's moments belong to the run that made
  them, and a Hugging Face directory has none.

The run's ``config.json`` records its parent (:class:`Parent`): the path,
the checkpoint actually read and a SHA-256 of the weights, so a run can be
traced back to what it started from even after the parent run moved on.

**Freezing** (``--train-only``): train everything (``all``), everything but
the token and position embeddings (``no-embeddings``; the token embedding is
also the output layer, so the vocabulary's geometry stays as it was), or
only the last N blocks and the final LayerNorm (``last-N``).  Frozen
parameters get no gradient and no AdamW state, which is where the memory of
training goes: two moments per trained parameter, plus its gradient.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .checkpoint import load_state_strict, read_model, weights_sha256
from .errors import UserError
from .model import GPT, GPTConfig
from .tokenizer import Tokenizer, load_tokenizer

# The fine-tuning recipe: what `--init-from` changes in TrainConfig's defaults
# (any of them can still be set on the command line).  A trained model is
# already near a good minimum, so the peak learning rate is 10x below the
# from-scratch recipe's, and the warmup short: there is no random start to
# calm down, only AdamW's moments to fill.  And AdamW for every parameter,
# the optimizer GPT-2 and the plays model were measured with (Muon, the
# from-scratch default, is not the tool to nudge a trained model).
# Measured in the README's "Fine-tune a model on your text".
FINETUNE_DEFAULTS = dict(optimizer="adamw", lr=3e-4, min_lr=3e-5, warmup_steps=10, max_steps=100,
                         eval_every=20, checkpoint_every=50)

# GPTConfig fields that a fine-tuning run may set differently from its parent.
MAY_CHANGE = ("n_ctx", "dropout")

TRAIN_ONLY_CHOICES = "all, no-embeddings or last-N (the last N blocks and the final LayerNorm)"


@dataclass
class Parent:
    """Where a fine-tuning run started from, as recorded in its ``config.json``."""

    path: str  # what was given to --init-from
    checkpoint: str  # the directory actually read (a run's latest checkpoint, say)
    sha256: str  # weights_sha256 of the weights as read
    n_ctx: int  # the parent's context, before any cropping

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Start(NamedTuple):
    """What a fine-tuning run starts with: the model (in training mode, on the CPU), its tokenizer, its parent."""

    model: GPT
    tokenizer: Tokenizer
    parent: Parent


def finetune_config(source: GPTConfig, overrides: dict, path) -> GPTConfig:
    """The parent's config, with the fields that may change set from ``overrides``.
    Anything else that differs from the parent is refused, naming the field."""
    for name, value in overrides.items():
        flag = "--" + name.replace("_", "-")
        if name == "n_ctx" and value > source.n_ctx:
            raise UserError(f"{flag} {value} is larger than the context of {path} ({source.n_ctx}): its position "
                            f"embeddings stop there; give --n-ctx {source.n_ctx} or less")
        if name not in MAY_CHANGE and getattr(source, name) != value:
            raise UserError(f"{flag} {value} contradicts --init-from {path}, whose {name} is "
                            f"{getattr(source, name)}; the model's shape comes from --init-from: drop {flag}")
    return dataclasses.replace(source, **{k: v for k, v in overrides.items() if k in MAY_CHANGE})


def check_tokenizer(spec: str | None, tokenizer: Tokenizer, path) -> None:
    """A ``--tokenizer`` given with ``--init-from`` must name the parent's own
    tokenizer: the weights are indexed by its token ids."""
    if spec is None:
        return
    same = (spec == "gpt2" or Path(spec).is_file()) and load_tokenizer(spec).to_dict() == tokenizer.to_dict()
    if not same:
        raise UserError(f"--tokenizer {spec} contradicts --init-from {path}, whose tokenizer is {describe(tokenizer)}; "
                        "the tokenizer comes from --init-from: drop --tokenizer")


def describe(tokenizer: Tokenizer) -> str:
    d = tokenizer.to_dict()
    return "GPT-2's" if d.get("kind") == "gpt2" else f"its own {d.get('kind')} of {tokenizer.n_vocab:,} tokens"


def start_from(path, model_overrides: dict | None = None, tokenizer_spec: str | None = None) -> Start:
    """What a fine-tuning run starts with (see :class:`Start`).  One line
    and nothing changed if PATH is not a model or a flag contradicts it."""
    source_cfg, state, tokenizer, folder = read_model(path, "--init-from")
    check_tokenizer(tokenizer_spec, tokenizer, path)
    cfg = finetune_config(source_cfg, model_overrides or {}, path)
    model = GPT(dataclasses.replace(cfg, n_ctx=source_cfg.n_ctx))
    load_state_strict(model, state, folder)
    parent = Parent(str(path), str(Path(folder).resolve()), weights_sha256(state), source_cfg.n_ctx)
    del state
    if cfg.n_ctx < source_cfg.n_ctx:
        model.crop_context(cfg.n_ctx)
    return Start(model.train(), tokenizer, parent)


# ---------------------------------------------------------------------------
# Freezing
# ---------------------------------------------------------------------------


def check_train_only(choice: str, n_layers: int | None = None) -> None:
    """Check ``--train-only``: its spelling, and with ``n_layers`` that the model has the blocks it names."""
    if choice not in ("all", "no-embeddings") and not re.fullmatch(r"last-[1-9]\d*", choice):
        raise UserError(f"--train-only must be {TRAIN_ONLY_CHOICES}, got {choice!r}")
    if n_layers is not None and choice.startswith("last-") and int(choice[5:]) > n_layers:
        raise UserError(f"--train-only {choice}: the model has only {n_layers} blocks; give last-{n_layers} or fewer")


def trains(name: str, choice: str, n_layers: int) -> bool:
    """Whether parameter ``name`` trains under ``--train-only choice``."""
    if choice == "all":
        return True
    if name in ("embed.W_E", "pos_embed.W_pos"):
        return False
    if choice == "no-embeddings":
        return True
    first = n_layers - int(choice.removeprefix("last-"))  # the first block that trains
    block = re.match(r"blocks\.(\d+)\.", name)
    return block is None or int(block.group(1)) >= first  # ln_final always trains


def freeze(model: GPT, choice: str) -> int:
    """Turn off the gradients of what ``choice`` leaves out; return how many
    parameters still train.  The optimizer must be made afterwards (it only
    takes parameters that train, see ``train.param_groups``)."""
    check_train_only(choice, model.cfg.n_layers)
    for name, p in model.named_parameters():
        p.requires_grad_(trains(name, choice, model.cfg.n_layers))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
