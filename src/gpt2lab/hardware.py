"""What this machine can do fast: its cores and its matrix number formats; which device to train on.

Training picks its settings from these facts rather than from guesses:

* **threads**: one per *physical* core.  Matmul kernels keep a core's vector
  units busy; a second hyper-thread on the same core only competes for them.
  While a loop runs, :class:`ThreadChooser` drops to one thread when other
  programs keep the cores busy (then every thread waits for the slowest).
* **bf16 autocast**: worth it only where the hardware multiplies bf16
  natively (CUDA GPUs; x86 CPUs with AVX512-BF16 or AMX tiles).  Elsewhere,
  e.g. an AVX2-only laptop, PyTorch emulates bf16 matmuls by converting to
  fp32, which costs time and buys nothing, so we stay in fp32.

Master weights and the optimizer state are always fp32: autocast only
changes the dtype in which matmuls *compute*.

The device a run trains on (:func:`resolve_device`): ``auto`` is the GPU
where there is one, else the CPU; under torchrun each process takes its own.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch

from .errors import UserError

# /proc/cpuinfo flags that mean "bf16 matrix math in hardware"
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
AUTOCAST_CHOICES = ("auto", "bf16", "off")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU multiplies bf16 matrices in hardware."""
    if any(f in cpu_flags(cpuinfo) for f in NATIVE_BF16_FLAGS):
        return True
    # no /proc/cpuinfo (macOS, Windows): ask PyTorch which kernels it dispatched to
    return cpuinfo is None and torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")


def physical_cores(cpuinfo: str | None = None) -> int:
    """Number of physical cores (hyper-threads not counted)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    cores, physical = set(), "0"
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            cores.add((physical, value.strip()))
    return len(cores) or os.cpu_count() or 1


def autocast_dtype(device: torch.device, setting: str = "auto") -> torch.dtype | None:
    """The dtype matmuls compute in for ``setting`` (``auto``, ``bf16``, ``off``);
    ``None`` means plain fp32.  ``auto``: bf16 on CUDA and on CPUs with native
    bf16, fp32 elsewhere."""
    if setting not in AUTOCAST_CHOICES:
        raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_CHOICES)}, got {setting!r}")
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """A context in which matmuls compute in ``dtype`` (a no-op for ``None``)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


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


def use_deterministic_kernels(device: torch.device) -> None:
    """``--deterministic``: from now on, in this process, every PyTorch op
    must run a deterministic kernel, or stop with an error naming itself.

    On a CPU, training is deterministic without it (see ``Embed`` in
    ``model.py``); this only adds checks, and fills fresh buffers before use.
    On CUDA, some fast kernels add floats with atomics, in an order that
    varies from run to run; this swaps them for deterministic ones, which can
    be slower, and makes cuBLAS use fixed workspaces (which must be set
    before its first use: call this before anything runs on the GPU)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True)


class ThreadChooser:
    """Choose, while a loop runs, the thread count that makes its steps fastest.

    On a quiet machine one thread per core is fastest.  But a parallel kernel
    ends in a barrier where every thread waits for the slowest, and when
    another program keeps a core busy, the thread on that core runs only
    part of the time: then the whole step waits for it, and a generation
    step of small products can take several times longer with 2 threads
    than with 1.  No fixed setting fits both, so we measure: time steps with
    each candidate count, use the fastest, and now and then time one step
    with another candidate in case the load has changed.  A candidate that
    keeps losing is re-checked half as often each time (after 16, 32, ...
    up to 1,024 steps), and never sooner than 20 of its own steps' worth of
    the best's (a check 18x slower waits 360 steps), so checks cost at most
    about 5% of the time.

    ``with chooser.step(): ...`` runs one step with the chosen count and
    restores the caller's count afterwards, so nothing outside the step is
    affected.  ``clock`` is for tests."""

    FIRST_CHECK, LAST_CHECK = 16, 1024  # steps between re-checks of a losing candidate
    CHECK_COST = 20  # a check that takes r times the best step's time waits at least 20 r steps

    def __init__(self, most: int | None = None, clock=time.perf_counter, adapt: bool = True):
        most = most or torch.get_num_threads()
        # one first: never slower than one thread; adapt=False: always `most` (for comparisons)
        self.candidates = [1, most] if most > 1 and adapt else [most]
        self.clock = clock
        self.recent: dict[int, list[float]] = {n: [] for n in self.candidates}  # last two step times each
        self.wait = dict.fromkeys(self.candidates, self.FIRST_CHECK)  # steps until a loser is re-checked
        self.due = dict.fromkeys(self.candidates, 0)  # step number of each candidate's next check
        self.steps = 0

    @property
    def started(self) -> bool:
        return all(self.recent.values())

    @property
    def best(self) -> int:
        """The candidate whose recent steps were fastest (the best of its last two)."""
        timed = {n: min(t) for n, t in self.recent.items() if t}
        return min(timed, key=timed.get) if timed else self.candidates[0]

    def choose(self) -> int:
        if not self.started:  # start: one step with each
            return next(n for n in self.candidates if not self.recent[n])
        best = self.best
        due = [n for n in self.candidates if n != best and self.steps >= self.due[n]]
        return due[0] if due else best

    def record(self, n: int, seconds: float) -> None:
        was = self.best if self.started else None
        self.recent[n] = (self.recent[n] + [seconds])[-2:]
        self.steps += 1
        if not self.started:
            return
        best = self.best
        for m in self.candidates:
            if m == best:
                continue
            if m == n and m != was:  # a re-check that lost: look again later than last time
                slower = self.recent[m][-1] / min(self.recent[best])
                self.wait[m] = int(min(max(2 * self.wait[m], self.CHECK_COST * slower), self.LAST_CHECK))
            elif m == was or was is None:  # the best just lost its place (or the start is over)
                self.wait[m] = self.FIRST_CHECK
            else:
                continue
            self.due[m] = self.steps + self.wait[m]

    @contextlib.contextmanager
    def step(self, record: bool = True):
        """One step of the loop with the chosen thread count; ``record=False`` for
        a step unlike the others (e.g. generation's prefill), run with the best count."""
        n = self.choose() if record else self.best
        outside = torch.get_num_threads()
        torch.set_num_threads(n)
        start = self.clock()
        try:
            yield n
        finally:
            if record:
                self.record(n, self.clock() - start)
            torch.set_num_threads(outside)
