"""Data-parallel training: several processes, each with a whole copy of the model.

We use PyTorch's own engine, not a home-made one.  What happens, in order:

1. ``torchrun`` (or ``gpt2lab train --nproc N``, which calls the same
   launcher) starts one copy of ``gpt2lab train`` per device and tells each
   who it is through environment variables: ``RANK`` (0 .. world size - 1,
   unique over all machines), ``LOCAL_RANK`` (its index on this machine, so
   its GPU), ``WORLD_SIZE``, and where to meet (``MASTER_ADDR``/``MASTER_PORT``).
2. :func:`start` joins them into one process group: ``gloo`` on CPU,
   ``nccl`` (GPU to GPU) on CUDA.
3. ``DistributedDataParallel`` broadcasts rank 0's weights once, then, in the
   backward pass, averages every gradient over the ranks (an all-reduce) while
   the backward pass is still running.  Every rank then takes the same
   optimizer step on the same averaged gradient, so the copies stay identical
   without ever sending weights again.
4. Each rank trains on its own slice of every global batch (see
   ``WindowSampler`` in ``batches.py``); only rank 0 writes files.

With one process (no ``WORLD_SIZE`` in the environment) there is no process
group and every method here does nothing, so ``train.py`` reads the same in
both cases.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import Stopped, UserError

BACKENDS = ("auto", "gloo", "nccl")

# How long a rank waits in a collective (an all-reduce, a broadcast) for the
# others before giving up.  A rank that dies is normally noticed by torchrun
# within a second, which then stops the others; this is the last resort for
# a rank that hangs without dying.  Generous, because rank 0 alone writes
# checkpoints and plots while the others wait for it at the next step.
TIMEOUT = datetime.timedelta(minutes=10)


class AlreadyReported(UserError):
    """An error that a rank (usually rank 0) has printed already: stop
    without repeating it."""

    quiet = True


class LostRank(UserError):
    """Another rank vanished in the middle of a collective (it crashed or was
    killed); torchrun names it, so this rank only says what it saw, briefly."""

    def __init__(self, message: str, quiet: bool):
        super().__init__(message)
        self.quiet = quiet


# What the backends say when the other end of a collective is gone.
LOST_RANK_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                   "NCCL communicator was aborted", "NCCL Error")


def lost_rank(error: BaseException) -> LostRank | None:
    """A clear, traceback-free error for a rank that lost another, or None
    if ``error`` is something else (which then keeps its traceback)."""
    text = str(error)
    if not (isinstance(error, RuntimeError) and dist.is_initialized() and any(s in text for s in LOST_RANK_SIGNS)):
        return None
    rank = dist.get_rank()
    return LostRank(f"rank {rank} lost contact with another rank, which probably died (torchrun's report names "
                    f"it): {text.splitlines()[0]}", quiet=rank != 0)


@dataclass
class Ranks:
    """This process's place in the job.  ``Ranks()`` is a lone process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    in_group: bool = False  # joined a process group (torchrun started us, even as a single rank)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.in_group

    # -- collectives: every rank must call them, in the same order ----------

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Each value summed over the ranks; every rank gets the same result."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flags: list[bool], device: torch.device) -> list[bool]:
        """For each flag, whether any rank has it set: for decisions all ranks
        must take together, such as stopping."""
        if not self.distributed:
            return list(flags)
        return [v > 0 for v in self.sum([float(f) for f in flags], device)]

    def from_main(self, obj):
        """Rank 0's ``obj`` on every rank (a decision all must share, such as
        the run directory, or whether a final evaluation is due)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def main_first(self, fn, share: bool = False):
        """Run ``fn()`` on rank 0, then on the others.

        For preparation the others can reuse: rank 0 creates the run directory
        and tokenizes the data into the shared cache, the others then find it
        there instead of all writing it at once.  With ``share`` the others do
        not run ``fn`` at all but receive rank 0's result (it must pickle): for
        work done once, such as training a tokenizer.  If rank 0 fails, the
        others stop with it rather than wait for a message that never comes."""
        if not self.distributed:
            return fn()
        if self.is_main:
            try:
                result = fn()
            except BaseException as e:
                self.from_main((f"{type(e).__name__}: {e}", None))
                raise
            self.from_main((None, result if share else None))
            return result
        failure, shared = self.from_main(None)
        if failure is not None:
            raise AlreadyReported(f"rank 0 failed: {failure}")
        return shared if share else fn()

    # -- the model ------------------------------------------------------------

    def data_parallel(self, model: torch.nn.Module, chunk_size: int, device: torch.device) -> torch.nn.Module:
        """What the training step calls: ``step_model(x, y)`` -> mean loss.

        DDP does its gradient bookkeeping in ``forward``, and ``GPT.forward``
        returns logits, not the loss; so the loss goes through a thin module
        (:class:`LossOf`) whose ``forward`` is ``GPT.loss``.  The weights are
        still ``model``'s own: checkpoints save ``model``, never the wrapper,
        and need no ``module.`` prefix stripped."""
        step_model = LossOf(model, chunk_size)
        if not self.distributed:
            return step_model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None)

    @staticmethod
    def sync_gradients(step_model: torch.nn.Module, now: bool):
        """Context for one micro-step's backward pass.  Averaging gradients
        over the ranks costs a round of communication; with gradient
        accumulation only the last micro-step needs it (the gradients of the
        earlier ones are already added into ``.grad`` by then), so the others
        run under DDP's ``no_sync``."""
        if now or not hasattr(step_model, "no_sync"):
            return contextlib.nullcontext()
        return step_model.no_sync()


class LossOf(torch.nn.Module):
    """``forward(x, y)`` = ``model.loss(x, y)``: the loss as a module's forward, for DDP."""

    def __init__(self, model: torch.nn.Module, chunk_size: int = 0):
        super().__init__()
        self.model, self.chunk_size = model, chunk_size

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x, y, chunk_size=self.chunk_size)


def env_ranks() -> tuple[int, int, int] | None:
    """(rank, local rank, world size) from torchrun's environment, or None
    for a process that was not started by torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError("RANK, LOCAL_RANK and WORLD_SIZE must be integers; start the job with torchrun") from None
    return rank, local, world


def pick_backend(backend: str, device: torch.device) -> str:
    """``auto``: nccl between GPUs, gloo between CPUs."""
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise UserError(f"--backend nccl needs CUDA devices but this run is on {device.type}; "
                        "use --backend gloo or --device cuda")
    return backend


def start(device: torch.device, backend: str = "auto") -> Ranks:
    """Join the process group torchrun set up the environment for (nothing
    for a lone process).  ``device`` is this rank's device, from ``resolve_device``."""
    backend = pick_backend(backend, device)
    here = env_ranks()
    if here is None:
        return Ranks()
    rank, local, world = here
    if device.type == "mps" and world > 1:
        raise UserError("--device mps runs one process only; use --device cpu for several processes")
    if not dist.is_initialized():  # (a second train() in the same process reuses it)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
    return Ranks(dist.get_rank(), local, dist.get_world_size(), in_group=True)


def stop() -> None:
    """Leave the process group, if this process joined one (before exiting:
    NCCL wants it destroyed explicitly)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------
# `gpt2lab train --nproc N`: torchrun, on this machine
# ---------------------------------------------------------------------------


def launch(argv: list[str], nproc: int, run_dir: str) -> None:
    """Run ``python -m gpt2lab ARGV`` as ``nproc`` ranks on this machine,
    exactly as ``torchrun --standalone --nproc_per_node NPROC -m gpt2lab ARGV``
    would (it is torchrun's own launcher, called in-process so that a failure
    can be reported in one line).

    If a rank dies, torchrun's agent stops the others at once; the error is
    the dead rank's, and the run's last checkpoint is untouched (they are
    written atomically by rank 0), so ``--resume`` continues the run."""
    import signal
    import sys
    import uuid

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise UserError(f"--nproc must be a positive integer, got {nproc}")
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of each rank taking all of them
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"gpt2lab-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2)
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "gpt2lab", *argv)
    except SignalException as e:  # Ctrl-C or SIGTERM to the launcher: torchrun has stopped the ranks
        # torchrun passed the signal on to the ranks; rank 0 finished the step, saved it and said so.
        raise Stopped(f"stopped by {e.sigval.name}; checkpoints are written whole: continue from the last one "
                      f"with --nproc {nproc} --resume {run_dir}", int(e.sigval), quiet=True) from None
    except ChildFailedError as e:
        # {global rank: failure}.  Exit status 2 is a UserError the rank printed
        # itself, or a rank that lost another (LostRank); SIGTERM is torchrun
        # stopping the survivors.  The culprit is among the others.
        codes = {f.exitcode for f in e.failures.values()} - {-signal.SIGTERM}
        if codes and codes <= {128 + signal.SIGINT, 128 + signal.SIGTERM}:
            # A signal that reached only some ranks (SIGTERM to one process, say): every rank stopped at
            # the same step and rank 0 printed where to resume.  Exit as the signal asks, saying nothing more.
            signum = signal.SIGINT if 128 + signal.SIGINT in codes else signal.SIGTERM
            raise Stopped("already reported by rank 0", int(signum), quiet=True) from None
        culprits = {rank: f for rank, f in e.failures.items() if f.exitcode not in (2, -signal.SIGTERM)}
        if not culprits and any(f.exitcode == 2 for f in e.failures.values()):
            raise AlreadyReported("a UserError, already printed by the rank that met it") from None
        culprits = culprits or e.failures
        rank, first = min(culprits.items(), key=lambda item: (item[1].timestamp, item[0]))
        how = f"was killed by signal {-first.exitcode}" if first.exitcode < 0 else f"exited with code {first.exitcode}"
        raise UserError(f"rank {rank} {how}, so torchrun stopped all {nproc} ranks; checkpoints are written "
                        f"whole: continue from the last one with --nproc {nproc} --resume {run_dir}") from None
