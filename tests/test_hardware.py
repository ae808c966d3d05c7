import pytest
import torch

from gpt2lab import hardware as H
from gpt2lab.hardware import ThreadChooser

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


class FakeClock:
    """A clock that a step advances by what that step costs with the thread count it ran with."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_steps(chooser, clock, cost, steps: int) -> list[int]:
    """Thread counts the chooser used, step by step; ``cost(step, threads)`` is the step's time."""
    used = []
    for i in range(steps):
        with chooser.step() as n:
            assert torch.get_num_threads() == n
            clock.now += cost(i, n)
        used.append(n)
    return used


def test_thread_chooser_keeps_every_core_on_a_quiet_machine(threads):
    threads(1)  # the caller's count, restored around every step
    clock = FakeClock()
    used = run_steps(ThreadChooser(2, clock), clock, lambda i, n: 0.6 if n == 2 else 1.0, 2000)
    assert used[:2] == [1, 2]  # tries both
    assert used.count(1) <= 1 + 7  # then re-checks one thread less and less often
    assert torch.get_num_threads() == 1


def test_thread_chooser_drops_to_one_thread_when_a_core_gets_busy():
    clock = FakeClock()
    busy_from = 300  # then two threads wait on the busy core: 3x slower than one thread
    used = run_steps(ThreadChooser(2, clock), clock,
                     lambda i, n: 1.0 if n == 1 else (0.6 if i < busy_from else 3.0), 3000)
    assert used[busy_from + 3:].count(2) <= 8  # switched at once; two threads re-checked a few times
    after = [i for i, n in enumerate(used) if n == 2 and i > busy_from + 3]
    assert all(b - a >= 2 * (a - p) - 1 for p, a, b in zip(after, after[1:], after[2:]))  # ever rarer
    clock2 = FakeClock()
    back = run_steps(ThreadChooser(2, clock2), clock2, lambda i, n: 1.0 if n == 1 else (3.0 if i < 300 else 0.6), 1500)
    assert back[-500:].count(2) >= 490  # and back to two threads once the core is free


def test_thread_chooser_restores_the_count_after_a_failed_step(threads):
    threads(2)
    chooser = ThreadChooser(2)
    with pytest.raises(RuntimeError):
        with chooser.step():
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2
    assert ThreadChooser(1).candidates == [1]
