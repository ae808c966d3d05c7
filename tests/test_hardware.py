import pytest
import torch

from gpt2lab import hardware as H

# /proc/cpuinfo of a 2-core AVX2 machine (abridged) and one with AMX
AVX2 = """processor\t: 0
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse avx avx2 fma
processor\t: 1
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse avx avx2 fma
"""
# 2 sockets x 2 cores x 2 hyper-threads
SAPPHIRE = "".join(f"processor\t: {i}\nphysical id\t: {i // 4}\ncore id\t\t: {(i // 2) % 2}\n"
                   f"flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n" for i in range(8))


def test_cpu_flags_and_native_bf16_detection():
    assert {"avx2", "fma"} <= H.cpu_flags(AVX2)
    assert not H.cpu_has_native_bf16(AVX2)
    assert H.cpu_has_native_bf16(SAPPHIRE)


def test_physical_cores_ignore_hyperthreads():
    assert H.physical_cores(AVX2) == 2
    assert H.physical_cores(SAPPHIRE) == 4
    assert H.physical_cores("") >= 1  # no core ids: falls back to the logical count


def test_autocast_dtype_choices(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert H.autocast_dtype(cpu, "off") is None
    assert H.autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert H.autocast_dtype(cuda, "auto") is torch.bfloat16
    monkeypatch.setattr(H, "cpu_has_native_bf16", lambda: False)
    assert H.autocast_dtype(cpu, "auto") is None
    monkeypatch.setattr(H, "cpu_has_native_bf16", lambda: True)
    assert H.autocast_dtype(cpu, "auto") is torch.bfloat16
    with pytest.raises(ValueError, match="autocast"):
        H.autocast_dtype(cpu, "fp16")


def test_autocast_context_computes_matmuls_in_its_dtype():
    a = torch.randn(4, 4)
    with H.autocast(torch.device("cpu"), torch.bfloat16):
        assert (a @ a).dtype is torch.bfloat16
    with H.autocast(torch.device("cpu"), None):
        assert (a @ a).dtype is torch.float32
