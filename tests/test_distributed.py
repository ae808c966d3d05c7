"""Data-parallel training: how the global batch is split over ranks, a real
two-process gloo run against one process, resuming across process counts,
and the refusals."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt2lab import distributed as D
from gpt2lab import batches, hardware, runs
from gpt2lab import train as T
from gpt2lab.checkpoint import latest_checkpoint, load_model
from gpt2lab.errors import UserError
from gpt2lab.model import GPTConfig

from conftest import PARALLEL_SIZED, ROOT, assert_same_run, assert_user_error, metric_rows, run_cli

pytestmark = pytest.mark.usefixtures("token_cache")


def test_ranks_get_disjoint_windows_in_epoch_mode():
    """2 ranks x 3 windows x 2 micro-steps = 12 windows a step; 24 windows
    make an epoch of 2 steps, in which every window is seen once, by one rank."""
    samplers = [batches.WindowSampler(16 * 24 + 1, 16, 3, seed=1, epoch_mode=True, rank=r, world_size=2, grad_accum=2)
                for r in (0, 1)]
    seen = [[], []]
    for _ in range(2):
        for r, s in enumerate(samplers):
            micro = s.next_step()
            assert len(micro) == 2 and all(m.shape == (3,) for m in micro)
            seen[r] += torch.cat(micro).tolist()
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [16 * i for i in range(24)]


@pytest.mark.parametrize("epoch_mode", [False, True])
def test_global_batch_does_not_depend_on_the_split(epoch_mode):
    """One process with batch 8 and two ranks with batch 2 and 2 micro-steps
    train on the very same windows each step, and end in the same state."""
    one = batches.WindowSampler(16 * 20 + 1, 16, 8, seed=4, epoch_mode=epoch_mode)
    split = [batches.WindowSampler(16 * 20 + 1, 16, 2, seed=4, epoch_mode=epoch_mode, rank=r, world_size=2, grad_accum=2)
             for r in (0, 1)]
    for _ in range(7):  # several epochs of 20 windows
        (whole,) = one.next_step()
        parts = [s.next_step() for s in split]  # parts[rank][micro_step]
        assert torch.equal(torch.cat([parts[r][m] for m in range(2) for r in range(2)]), whole)
    for s in split:
        a, b = one.state_dict(), s.state_dict()
        assert (a["epoch"], a["position"]) == (b["epoch"], b["position"])
        assert torch.equal(a["generator"], b["generator"])


def rows(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_curve(a, b, tol=1e-5):
    """Same steps, same logged values to ``tol`` (timings aside)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        keys = set(ra) - {"tokens_per_sec"}
        assert keys == set(rb) - {"tokens_per_sec"}, (ra, rb)
        for k in keys:
            assert abs(ra[k] - rb[k]) <= tol, (k, ra, rb)


def test_two_processes_match_one_and_resume_across_process_counts(corpus, tmp_path):
    """The global batch is 4 sequences: one process x 4, or two ranks x 2.
    Steps 1-2 on two gloo ranks, 3-4 resumed in one process, 5-6 resumed on
    two ranks again: the log matches one uninterrupted process to 1e-5.
    (A constant learning rate, so that --max-steps can grow on resume; fp32, because bf16
    autocast, the default on CPUs with native bf16, rounds differently for other batch shapes.)"""
    common = ["--data", corpus, "--preset", "tiny", "--n-ctx", "16", "--warmup-steps", "0", "--lr", "0.01",
              "--min-lr", "0.01", "--eval-every", "2", "--eval-batches", "2", "--checkpoint-every", "2",
              "--sample-tokens", "0", "--progress", "false", "--seed", "5", "--device", "cpu", "--autocast", "off"]
    # In this process: the reference, and the one-process middle part (saves starting Python twice).
    quiet = dict(log=runs.quiet)
    T.train(T.TrainConfig(data=str(corpus), warmup_steps=0, lr=0.01, min_lr=0.01, eval_every=2, eval_batches=2,
                          checkpoint_every=2, sample_tokens=0, progress=False, seed=5, device="cpu", batch_size=4,
                          max_steps=6, out=str(tmp_path / "one"), autocast="off"),
            GPTConfig.from_preset("tiny", n_ctx=16), **quiet)
    two = tmp_path / "two"
    proc = run_cli("train", *common, "--batch-size", "2", "--nproc", "2", "--max-steps", "2", "--out", two, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])  # rank 0's, printed once
    assert proc.stdout.count('"run_dir"') == 1 and summary["step"] == 2
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    load_model(two)  # a plain checkpoint, no DDP "module." prefix
    T.train(T.TrainConfig(), resume=two, train_overrides=dict(batch_size=4, max_steps=4), **quiet)
    proc = run_cli("train", "--resume", two, "--batch-size", "2", "--nproc", "2", "--max-steps", "6")
    assert proc.returncode == 0, proc.stderr
    a, b = rows(tmp_path / "one"), rows(two)
    assert_same_curve(a, b)
    print("\nstep  1 process x 4   2 ranks x 2 (steps 3-4 resumed in 1 process x 4)")
    for ra, rb in zip(a, b):
        print(f"{ra['step']:4d}  {ra['loss']:.8f}  {rb['loss']:.8f}  diff {abs(ra['loss'] - rb['loss']):.1e}")


def rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The process of ``rank`` among the launcher's children (from /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != launcher_pid:
                continue
            if f"RANK={rank}".encode() in (stat.parent / "environ").read_bytes().split(b"\0"):
                return int(stat.parent.name)
        except (OSError, ValueError, IndexError):
            continue
    return None


def start_endless_two_rank_job(corpus, run, checkpoint_every: int, **popen) -> subprocess.Popen:
    """``gpt2lab train --nproc 2`` on the tiny preset, for 100,000 steps: a job for a test to interrupt."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    return subprocess.Popen([sys.executable, "-m", "gpt2lab", "train", "--data", str(corpus), "--preset", "tiny",
                             "--n-ctx", "16", "--batch-size", "2", "--nproc", "2", "--max-steps", "100000",
                             "--checkpoint-every", str(checkpoint_every), "--eval-every", "1000",
                             "--eval-batches", "1", "--sample-tokens", "0", "--progress", "false", "--device", "cpu",
                             "--out", str(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process in /proc")
def test_a_dead_rank_stops_the_job_and_the_run_resumes(corpus, tmp_path):
    """kill -9 of rank 1: the launcher returns promptly, names rank 1, and the
    last checkpoint resumes in one process."""
    run = tmp_path / "run"
    proc = start_endless_two_rank_job(corpus, run, checkpoint_every=3)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (run / "checkpoints" / "step_00000003").is_dir():
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        pid = rank_pid(proc.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)  # no hang
    finally:
        proc.kill()
    assert proc.returncode == 2 and "rank 1 was killed by signal 9" in err, err
    assert "Traceback" not in err
    step = int(latest_checkpoint(run).name[5:])
    result = T.train(T.TrainConfig(), resume=run, train_overrides=dict(batch_size=4, max_steps=step + 1),
                     log=runs.quiet)
    assert result.step == step + 1


def dead(pid: int) -> bool:
    """Gone, or a zombie (killed, not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@pytest.mark.slow
def test_two_processes_resume_after_kill_9_to_the_uninterrupted_run(corpus, tmp_path):
    """``--nproc 2`` at the default settings: a job killed outright (``kill -9``
    of the launcher and both ranks, their deaths asserted) and resumed on two processes
    ends with every metrics row and every final tensor of an uninterrupted
    two-process run."""
    args = ["--data", str(corpus), *PARALLEL_SIZED, "--nproc", "2", "--device", "cpu",
            "--max-steps", "12", "--eval-every", "4", "--checkpoint-every", "3"]
    full = run_cli("train", "--out", tmp_path / "full", *args)
    assert full.returncode == 0, full.stderr
    cut = tmp_path / "cut"
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    proc = subprocess.Popen([sys.executable, "-m", "gpt2lab", "train", "--out", str(cut), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, ranks = time.time() + 240, [None, None]
        while time.time() < deadline and proc.poll() is None and None in ranks:
            ranks = [rank_pid(proc.pid, r) for r in (0, 1)]
        while time.time() < deadline and proc.poll() is None:
            if (cut / "metrics.jsonl").is_file() and len((cut / "metrics.jsonl").read_text().splitlines()) >= 4:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the job ended before it could be killed"
        assert None not in ranks
        for pid in (proc.pid, *ranks):  # a power cut: the launcher and both ranks, at once
            os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        proc.kill()
    gone = time.time() + 30
    while time.time() < gone and not all(dead(pid) for pid in ranks):
        time.sleep(0.1)
    assert all(dead(pid) for pid in ranks), "a rank survived kill -9"
    killed_at = metric_rows(cut)[-1]["step"]
    assert 4 <= killed_at < 12
    resumed = run_cli("train", "--resume", cut, "--nproc", "2", "--progress", "false")
    assert resumed.returncode == 0, resumed.stderr
    resumed_from = int(re.search(rf"resuming {re.escape(str(cut))} from step (\d+)", resumed.stdout).group(1))
    assert resumed_from % 3 == 0 and 3 <= resumed_from <= killed_at
    assert_same_run(cut, tmp_path / "full")


def test_resume_keeps_the_global_batch(corpus, tmp_path):
    saved = T.TrainConfig(batch_size=4, grad_accum=2)
    runs.check_global_batch(saved, 1, T.TrainConfig(batch_size=2, grad_accum=2), 2, tmp_path)  # 4x1x2 = 2x2x2
    runs.check_global_batch(saved, 1, T.TrainConfig(batch_size=1, grad_accum=4), 2, tmp_path)
    with pytest.raises(UserError, match="global batch was 8 sequences"):
        runs.check_global_batch(saved, 1, T.TrainConfig(batch_size=4, grad_accum=2), 2, tmp_path)


def test_backend_and_device_choice():
    cpu = torch.device("cpu")
    assert D.pick_backend("auto", cpu) == "gloo" and D.pick_backend("gloo", cpu) == "gloo"
    with pytest.raises(UserError, match="nccl needs CUDA"):
        D.pick_backend("nccl", cpu)
    assert hardware.resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert hardware.resolve_device("cpu", local_rank=1) == cpu


@pytest.mark.parametrize("args,fragment", [
    (["--nproc", "0"], "--nproc"),
    (["--backend", "mpi"], "--backend"),
    (["--device", "tpu"], "--device"),
])
def test_bad_distributed_flags_are_one_line_errors(tmp_path, args, fragment):
    assert_user_error(run_cli("train", "--out", tmp_path / "run", "--max-steps", "1", *args), fragment)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rank_takes_its_gpu_with_nccl(corpus, tmp_path):
    """torchrun with one rank on the GPU (nccl, --device auto) against the CPU: the same curve to 1e-3."""
    common = ["--data", corpus, "--preset", "tiny", "--n-ctx", "16", "--batch-size", "4", "--max-steps", "4",
              "--eval-every", "2", "--eval-batches", "1", "--sample-tokens", "0", "--progress", "false"]
    cpu = run_cli("train", *common, "--device", "cpu", "--out", tmp_path / "cpu")
    assert cpu.returncode == 0, cpu.stderr
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    gpu = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                          "-m", "gpt2lab", "train", *map(str, common), "--device", "auto",
                          "--out", str(tmp_path / "gpu")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert gpu.returncode == 0, gpu.stderr
    assert_same_curve(rows(tmp_path / "cpu"), rows(tmp_path / "gpu"), tol=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process in /proc")
@pytest.mark.parametrize("how, signum, status", [
    ("Ctrl-C: the terminal signals the whole process group", signal.SIGINT, 130),
    ("SIGTERM to rank 1 alone", signal.SIGTERM, 143),
])
def test_a_signal_stops_every_rank_at_the_same_step_and_the_run_resumes(corpus, tmp_path, how, signum, status):
    """Two ranks: the step in progress finishes on both, rank 0 writes a checkpoint at that step,
    the job exits 130 (Ctrl-C) or 143 (SIGTERM) with one line saying how to resume, and it resumes."""
    run = tmp_path / "run"
    proc = start_endless_two_rank_job(corpus, run, checkpoint_every=1000,
                                      start_new_session=True)  # its own process group, as a job in a terminal
    metrics = run / "metrics.jsonl"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            pid = rank_pid(proc.pid, 1)
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    ours = [l for l in err.splitlines() if l.startswith("gpt2lab")]  # (torchrun logs its own lines too)
    assert proc.returncode == status, err
    assert len(ours) == 1 and f"--nproc 2 --resume {run}" in ours[0] and "error" not in ours[0], err
    assert "Traceback" not in err
    step = int(latest_checkpoint(run).name[5:])
    logged = [json.loads(l)["step"] for l in metrics.read_text().splitlines()]
    assert step >= 3 and logged[-1] == step  # the checkpoint is at the last step the ranks took together
    result = T.train(T.TrainConfig(), resume=run, train_overrides=dict(batch_size=4, max_steps=step + 1), log=runs.quiet)
    assert result.step == step + 1
