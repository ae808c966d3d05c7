"""Training a GPT-2: the loop, and each thing it does as a named step.

The training stage is four modules: ``recipe.py`` (``TrainConfig``, the
learning-rate schedule, AdamW), ``batches.py`` (which windows a step sees),
``runs.py`` (setting a run up, fresh or resumed; its directory and
checkpoints) and this one, the loop.

One step of training (:func:`optimization_step`):

1. draw ``batch_size`` windows of ``n_ctx + 1`` tokens from the training
   tokens (inputs are the first ``n_ctx``, targets the same shifted by one;
   see ``batches.py``);
2. compute the mean cross-entropy of predicting each next token and its
   gradient, ``grad_accum`` times, adding the gradients up;
3. clip the gradient's global norm to ``grad_clip``;
4. take an AdamW step at the learning rate of this step (:func:`lr_at`): a
   linear warmup, then a cosine decay down to ``min_lr``.

Every ``eval_every`` steps the model is scored on a fixed set of validation
windows (loss and bits per byte), ``metrics.jsonl`` and ``loss.png`` are
updated (:class:`MetricsLog`); a fine-tuning run (``init_from``) is also
scored once before its first update, at step 0.  Every ``checkpoint_every``
steps (and at the end) a checkpoint is written atomically (:func:`save`; the files: ``runs.py``).  Resuming restores the weights, the optimizer, the sampler's
position and every random state, so a resumed run produces the very same
losses as one that was never interrupted.

What can go wrong, and what happens then:

* killed outright (SIGKILL, power cut): the newest complete checkpoint is
  intact, at most ``checkpoint_every`` steps are lost, ``--resume`` goes on;
* Ctrl-C or SIGTERM: the step in progress finishes, a checkpoint is written,
  and the run stops with a message saying how to resume (:class:`StopOnSignal`);
* a checkpoint that cannot be written (disk full): the run stops saying so,
  the earlier checkpoints untouched;
* a NaN or infinite loss or gradient: the run stops, keeping the last good
  checkpoint, or with ``on_nan="skip"`` skips that step (:func:`skip_or_stop`);
  a loss far above the recent mean (``spike_factor``) is reported on stderr
  and in the metrics (:func:`loss_spike`).

This file reads in the order of a step: the step itself, evaluation and the
metrics, stopping, then :func:`train`, the loop that ties them together.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .batches import eval_starts, get_batch
from .distributed import Ranks
from .errors import Stopped, UserError
from .model import GPT, GPTConfig
from .recipe import TrainConfig, lr_at
from .runs import METRICS_FILE, Run, run_config, save_checkpoint, set_up, step_dir


# How many recent losses the spike detector averages, and how many it needs first.
SPIKE_WINDOW, SPIKE_MIN_HISTORY = 20, 5


# ---------------------------------------------------------------------------
# One optimization step
# ---------------------------------------------------------------------------


def optimization_step(run: Run, lr: float, warn) -> tuple[float, float, bool]:
    """One step at learning rate ``lr``: ``grad_accum`` micro-steps of forward
    and backward whose gradients add up, the gradient's norm clipped to
    ``grad_clip``, then AdamW.  Returns the loss (the mean over the global
    batch), the gradient norm before clipping, and whether both were finite;
    a step that was not is skipped or stops the run (:func:`skip_or_stop`)."""
    cfg, optimizer = run.cfg, run.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = 0.0
    for micro, starts in enumerate(run.sampler.next_step()):
        x, y = get_batch(run.shards.train, starts, run.model.cfg.n_ctx, run.device)
        with run.ranks.sync_gradients(run.step_model, now=micro == cfg.grad_accum - 1):
            loss = run.loss_fn(x, y)
            (loss / cfg.grad_accum).backward()
        loss_sum += loss.item()
    loss_value = run.ranks.sum([loss_sum], run.device)[0] / (cfg.grad_accum * run.ranks.world_size)  # global mean
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0
                                                     else float("inf")))
    finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
    if finite:
        optimizer.step()
    else:
        skip_or_stop(run, loss_value, grad_norm, warn)
    optimizer.zero_grad(set_to_none=True)
    return loss_value, grad_norm, finite


# ---------------------------------------------------------------------------
# Evaluation, the metrics log and the final sample
# ---------------------------------------------------------------------------


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


def validation(run: Run) -> dict:
    """``val_loss`` and ``val_bpb`` of the run's model now."""
    return evaluate(run.model, run.shards.val, run.cfg, run.model.cfg.n_ctx, run.device,
                    run.shards.val_bytes_per_token, run.ranks)


class MetricsLog:
    """What a run reports as it goes: ``metrics.jsonl`` (one JSON object per
    logged step), the progress bar with the loss and tokens per second,
    warnings printed above the bar, and ``loss.png`` after each evaluation.
    Only rank 0 writes or prints; every rank keeps ``last``, the latest value
    of each metric (a resumed run starts from those in its file)."""

    def __init__(self, run: Run):
        from tqdm import tqdm

        self.run, self.main, self.path = run, run.ranks.is_main, run.run_dir / METRICS_FILE
        self.tqdm_write = tqdm.write
        self.bar = tqdm(total=run.total_steps, initial=run.step, desc="training", dynamic_ncols=True,
                        disable=not (run.cfg.progress and self.main), file=sys.stderr)
        self.last: dict = {}
        if run.checkpoint is not None and self.main and self.path.is_file():
            from .plots import read_metrics

            for r in read_metrics(run.run_dir):
                self.last.update(r)
        if self.main:
            self.path.touch()
        self.window_start, self.window_tokens, self.tok_s = time.monotonic(), 0, 0.0

    def warn(self, message: str) -> None:
        if self.main:
            self.tqdm_write(f"warning: {message}", file=sys.stderr)  # above the bar

    def row(self, loss: float, lr: float) -> dict:
        return {"step": self.run.step, "tokens": self.run.tokens, "loss": loss, "lr": lr,
                "tokens_per_sec": round(self.tok_s, 1)}

    def step_row(self, loss: float, lr: float, grad_norm: float, finite: bool, spike: bool) -> dict | None:
        """Move the bar and the throughput on by one step; this step's row if it is one to log
        (every ``log_every`` steps, the last step, a spike, a skipped step), else ``None``."""
        run = self.run
        self.bar.update(1)
        self.window_tokens += run.tokens_per_step
        now = time.monotonic()
        self.tok_s = self.window_tokens / max(now - self.window_start, 1e-9)
        if not (run.step % run.cfg.log_every == 0 or run.step == run.total_steps or spike or not finite):
            return None
        row = self.row(loss, lr)
        if spike:
            row["spike"] = True
        if not finite:  # no "loss" (JSON has no NaN); the plots skip the point
            del row["loss"]
            row["skipped"] = f"loss {loss}, gradient norm {grad_norm}"
        self.window_start, self.window_tokens = now, 0
        return row

    def write(self, row: dict | None) -> None:
        """Append ``row`` to metrics.jsonl; show it on the bar; redraw loss.png if it has a validation score."""
        if row is None:
            return
        self.last = {**self.last, **row}
        if not self.main:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if "lr" in row:  # a training step's row (not the final score)
            self.bar.set_postfix_str(f"loss {row.get('loss', math.nan):.3f} lr {row['lr']:.1e} {self.tok_s:,.0f} tok/s"
                                     + (f" val {row['val_loss']:.3f}" if "val_loss" in row else ""))
        if "val_loss" in row:
            refresh_plot(self.run.run_dir)

    def close(self) -> None:
        self.bar.close()


def refresh_plot(run_dir: Path) -> None:
    from .plots import plot_runs

    try:
        plot_runs([run_dir], Path(run_dir) / "loss.png")
    except UserError:
        pass  # a picture is never worth stopping a run for


def final_evaluation(run: Run, metrics: MetricsLog) -> None:
    """Score the final weights, unless the last logged row already did, and redraw loss.png."""
    if run.ranks.from_main("val_loss" not in metrics.last or metrics.last.get("step") != run.step):  # all ranks, or none
        metrics.write({"step": run.step, "tokens": run.tokens, **validation(run)})
    elif run.ranks.is_main:
        refresh_plot(run.run_dir)


def final_sample(run: Run) -> str:
    """``sample_tokens`` of text from the trained model, from the end-of-text token, seeded by ``seed``."""
    from .generate import sample

    g = torch.Generator().manual_seed(run.cfg.seed)
    ids = sample(run.model, [run.tokenizer.eot_token], run.cfg.sample_tokens, run.cfg.sample_temperature,
                 run.cfg.sample_top_k or None, generator=g)
    return run.tokenizer.decode(ids)


# ---------------------------------------------------------------------------
# Stopping: steps done, time up, a signal, a NaN
# ---------------------------------------------------------------------------


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


def training_minutes(run: Run, run_start: float) -> float | None:
    """Minutes of training so far, for a schedule that follows ``max_minutes``
    (None without one): the mean over the ranks, since every rank must step
    at the same learning rate."""
    if run.cfg.max_minutes is None:
        return None
    minutes = (time.monotonic() - run_start) / 60
    return run.ranks.sum([minutes], run.device)[0] / run.ranks.world_size


def stop_reason(run: Run, signals: StopOnSignal, run_start: float) -> str | None:
    """Why the run stops before its next step, or ``None`` to go on: its
    steps are done (``max_steps``, or ``epochs``), its time is up
    (``max_minutes``), or it was asked to stop (``SIGINT``, ``SIGTERM``)."""
    cfg = run.cfg
    if run.step >= run.total_steps:
        return "epochs" if cfg.epochs is not None and run.total_steps < cfg.max_steps else "max_steps"
    # All ranks stop at the same step, or the others would wait for them forever:
    # clocks differ, and a signal may reach only some ranks.
    out_of_time, signalled = run.ranks.any([cfg.max_minutes is not None and (time.monotonic() - run_start) / 60
                                            >= cfg.max_minutes, signals.signum is not None], run.device)
    if out_of_time:
        return "max_minutes"
    if signalled:
        signals.signum = signals.signum or signal.SIGTERM  # a rank that was not signalled stops as if it were
        return signal.Signals(signals.signum).name
    return None


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def skip_or_stop(run: Run, loss: float, grad_norm: float, warn) -> None:
    """The step about to be taken has a NaN or infinite loss or gradient:
    stop the run, keeping the last good checkpoint (``on_nan="stop"``), or
    skip it, leaving the weights and the optimizer as they were (``"skip"``)."""
    if run.cfg.on_nan == "stop":
        where = f"; the last good checkpoint is {run.checkpoint}" if run.checkpoint else "; no checkpoint was written"
        raise TrainingDiverged(f"loss became {loss} at step {run.step + 1} (gradient norm {grad_norm}), "
                               f"training stopped{where}; try a lower --lr, or --on-nan skip")
    warn(f"step {run.step + 1}: loss {loss}, gradient norm {grad_norm}; step skipped")


def loss_spike(run: Run, loss: float, finite: bool, warn) -> bool:
    """Is this step's loss more than ``spike_factor`` times the mean of the
    recent ones?  Reports it if so; then adds a finite loss to the window."""
    recent, factor = run.recent_losses, run.cfg.spike_factor
    spike = (finite and factor > 0 and len(recent) >= SPIKE_MIN_HISTORY
             and loss > factor * sum(recent) / len(recent))
    if spike:
        warn(f"step {run.step}: loss spike, {loss:.4f} is more than {factor:g} times the mean "
             f"of the last {len(recent)} steps ({sum(recent) / len(recent):.4f})")
    if finite:
        run.recent_losses = (recent + [loss])[-SPIKE_WINDOW:]
    return spike


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


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


def save(run: Run) -> None:
    """Checkpoint the run at its current step: rank 0 writes it (see
    ``runs.save_checkpoint``), the other ranks note where it is."""
    if not run.ranks.is_main:
        run.checkpoint = step_dir(run.run_dir, run.step)
        return
    progress = {"step": run.step, "tokens": run.tokens, "elapsed": run.elapsed_before + time.monotonic() - run.started,
                "recent_losses": list(run.recent_losses)}
    run.checkpoint = save_checkpoint(run.run_dir, run.step, run.model, run.tokenizer, run.optimizer, run.sampler,
                                     progress, run.cfg.keep_checkpoints)


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
    started = time.monotonic()
    cfg, model_cfg, ckpt = run_config(cfg, model_cfg, resume, train_overrides or {}, model_overrides or {})
    start = None
    if ckpt is None and cfg.init_from is not None:  # fine-tuning: the model and its tokenizer come from --init-from
        from .finetune import start_from

        start = start_from(cfg.init_from, model_overrides, (train_overrides or {}).get("tokenizer"))
        model_cfg = start.model.cfg
    fit_vocab = ckpt is None and start is None and "d_vocab" not in (model_overrides or {})
    run = set_up(cfg, model_cfg, ckpt, fit_vocab, log, started, start)
    metrics, signals = MetricsLog(run), StopOnSignal()
    if start is not None:  # where the base model stands on the new text, before any update
        metrics.write({"step": 0, "tokens": 0, **validation(run)})
    run_start = time.monotonic()
    try:
        signals.install()
        while (stopped_by := stop_reason(run, signals, run_start)) is None:
            lr = lr_at(run.step, cfg, run.total_steps, training_minutes(run, run_start))
            with run.step_threads():
                loss, grad_norm, finite = optimization_step(run, lr, metrics.warn)
            run.step += 1
            run.tokens += run.tokens_per_step
            spike = loss_spike(run, loss, finite, metrics.warn)
            row = metrics.step_row(loss, lr, grad_norm, finite, spike)  # None if this step is not logged
            if run.step % cfg.eval_every == 0 or run.step == run.total_steps:
                row = {**(row or metrics.row(loss, lr)), **validation(run)}
            metrics.write(row)
            if run.step % cfg.checkpoint_every == 0:
                save(run)
            if on_step is not None:
                on_step(run.step)
        if run.checkpoint is None or run.checkpoint.name != step_dir(run.run_dir, run.step).name:
            save(run)  # the final state, unless that step was just saved
    finally:
        signals.restore()
        metrics.close()
    if signals.signum is not None:
        raise Stopped(f"stopped by {stopped_by} at step {run.step}, checkpoint {run.checkpoint} saved; continue with: "
                      f"gpt2lab train{f' --nproc {run.ranks.world_size}' if run.ranks.world_size > 1 else ''} --resume {run.run_dir}",
                      signals.signum)
    final_evaluation(run, metrics)
    result = RunResult(run.run_dir, run.step, run.tokens, metrics.last, run.checkpoint, stopped_by, rank=run.ranks.rank)
    if cfg.sample_tokens > 0 and run.ranks.is_main:
        result.sample = final_sample(run)
    return result
