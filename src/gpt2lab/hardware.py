"""What this machine can do fast: its cores and its matrix number formats; which device to train on.

Training picks its settings from these facts rather than from guesses:

* **threads**: one per *physical* core.  Matmul kernels keep a core's vector
  units busy; a second hyper-thread on the same core only competes for them.
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
