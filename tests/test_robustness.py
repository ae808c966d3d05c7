"""Never lose a run: SIGKILL at random moments, Ctrl-C and SIGTERM, a full
disk, booby-trapped pickles, checkpoints from another run, NaN losses and
loss spikes, and the memory of data preparation on a big corpus."""

import hashlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import forked_cli
from gpt2lab import runs
from gpt2lab import train as T
from gpt2lab.checkpoint import MODEL_META, latest_checkpoint, load_model
from gpt2lab.errors import UserError
from gpt2lab.model import GPT, GPTConfig

from conftest import ROOT, WORDS, Booby  # and the `corpus` fixture

EVERY = 3  # --checkpoint-every of the crash runs


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("token-cache"))


@pytest.fixture(autouse=True)
def _cache_env(cache, monkeypatch):
    monkeypatch.setenv("GPT2LAB_CACHE", cache)


def crash_args(corpus, max_steps):
    """A tiny run with frequent checkpoints, at the default thread count.
    Evaluation only at the end: each one redraws loss.png, which is slow."""
    return ["--data", corpus, "--preset", "tiny", "--n-ctx", "16", "--batch-size", "4", "--max-steps", max_steps,
            "--warmup-steps", "2", "--eval-every", "1000", "--eval-batches", "1", "--checkpoint-every", EVERY,
            "--keep-checkpoints", "2", "--sample-tokens", "0", "--progress", "false", "--seed", "9"]


def losses(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "tokens_per_sec"} for r in rows]


def logged_step(run_dir) -> int:
    """The last step in metrics.jsonl (a line torn by a kill is skipped)."""
    path = run_dir / "metrics.jsonl"
    step = 0
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                step = max(step, json.loads(line)["step"])
            except (ValueError, KeyError):
                pass
    return step


def pending_writes(run_dir) -> list[str]:
    """Checkpoints being written (their temporary directories)."""
    folder = run_dir / "checkpoints"
    return [n for n in os.listdir(folder) if n.startswith(".tmp-step_")] if folder.is_dir() else []


def step_of(ckpt) -> int:
    return int(ckpt.name[len("step_"):])


def wait_until(proc, condition, timeout=120, poll=0.001):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if not proc.is_alive():
            return False
        time.sleep(poll)
    raise AssertionError("timed out waiting for the training process")


def same_weights(a, b) -> bool:
    ma, _ = load_model(a)
    mb, _ = load_model(b)
    return all(torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values()))


# ---------------------------------------------------------------------------
# Crash safety: SIGKILL, SIGINT, SIGTERM
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_at_most_one_checkpoint_interval(corpus, cache, tmp_path):
    """12 SIGKILLs, 6 at random steps and 6 inside a checkpoint write (the
    process is frozen with SIGSTOP as soon as a write is seen, and killed
    there; a write that finished in between does not count, and the next
    kill aims again); after each, the newest checkpoint is complete, the run
    lost at most the steps since it, and ``--resume`` continues; the finished
    run has exactly the losses and weights of a run that was never interrupted."""
    rng = random.Random(9)
    max_steps, n_kills = 96, 12
    env = {"GPT2LAB_CACHE": cache}
    args = crash_args(corpus, max_steps)
    ref = forked_cli.start(["train", "--out", tmp_path / "ref", *args], tmp_path / "ref.log", env)
    run, log = tmp_path / "run", tmp_path / "run.log"
    argv = ["train", "--out", run, *args]
    resumed_from, figures = 0, []

    def count(mid_write):
        return sum(f["mid_write"] == mid_write for f in figures)

    while count(True) < n_kills // 2 or count(False) < n_kills // 2:
        assert len(figures) < n_kills + 6, f"too many aimed kills missed their write: {figures}"
        i = len(figures)
        proc = forked_cli.start(argv, log, env)
        aim_at_write = count(True) < count(False) or count(False) == n_kills // 2
        if aim_at_write:  # a checkpoint being written, after one complete checkpoint past the resume point
            hit = wait_until(proc, lambda: any(int(n.split("_")[1].split("-")[0]) >= resumed_from + 2 * EVERY
                                               for n in pending_writes(run)))
        else:
            target = resumed_from + rng.randint(EVERY + 1, 3 * EVERY)
            hit = wait_until(proc, lambda: logged_step(run) >= target)
            time.sleep(rng.uniform(0, 0.05))
        assert hit, f"kill {i + 1}: the run ended before it could be killed\n{log.read_text()}"
        os.kill(proc.pid, signal.SIGSTOP)  # frozen: the files seen now are the files the kill leaves
        torn = bool(pending_writes(run))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
        done = logged_step(run)
        ckpt = latest_checkpoint(run)
        assert ckpt is not None, f"kill {i + 1}: no checkpoint survived"
        state = torch.load(ckpt / runs.STATE_FILE, map_location="cpu", weights_only=True)
        assert state["step"] == step_of(ckpt)
        load_model(ckpt)  # the weights and model.json are complete
        lost = done - step_of(ckpt)
        assert 0 <= lost <= EVERY, f"kill {i + 1}: logged step {done}, newest checkpoint {ckpt.name}"
        assert step_of(ckpt) >= resumed_from
        figures.append({"kill": i + 1, "aimed_at_write": aim_at_write, "mid_write": torn, "logged_step": done,
                        "resume_from": step_of(ckpt), "steps_lost": lost})
        resumed_from = step_of(ckpt)
        argv = ["train", "--resume", run]
    final = forked_cli.start(argv, log, env)
    final.join(300)
    ref.join(300)
    assert final.exitcode == 0 and ref.exitcode == 0, log.read_text()
    text = log.read_text()
    assert [int(s) for s in __import__("re").findall(r"resuming .* from step (\d+)", text)] == \
        [f["resume_from"] for f in figures]
    assert not pending_writes(run) and not any(n.startswith(".tmp") for n in os.listdir(run / "checkpoints"))
    a, b = losses(run), losses(tmp_path / "ref")
    assert a == b
    assert same_weights(run, tmp_path / "ref")
    mid_write = count(True)
    assert mid_write >= n_kills // 2 and count(False) >= n_kills // 2, figures  # (the loop's bound fails first)
    print(f"\nkill test: {len(figures)} kills, {len(figures)} resumes, {mid_write} kills inside a checkpoint write, "
          f"steps lost at most {max(f['steps_lost'] for f in figures)} (checkpoint every {EVERY}), "
          f"final val loss {a[-1]['val_loss']!r} vs uninterrupted {b[-1]['val_loss']!r} "
          f"(difference {abs(a[-1]['val_loss'] - b[-1]['val_loss'])})")
    for f in figures:
        print(f"  {f}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_stop_cleanly_after_a_checkpoint(corpus, cache, tmp_path, signum):
    run, log = tmp_path / "run", tmp_path / "run.log"
    proc = forked_cli.start(["train", "--out", run, *crash_args(corpus, 1000)], log, {"GPT2LAB_CACHE": cache})
    assert wait_until(proc, lambda: logged_step(run) >= 4), log.read_text()
    os.kill(proc.pid, signum)
    proc.join(120)
    assert proc.exitcode == 128 + signum, log.read_text()
    lines = [l for l in log.read_text().splitlines() if l.strip()]
    name = signal.Signals(signum).name
    assert lines[-1].startswith(f"gpt2lab train: stopped by {name} at step")
    assert f"gpt2lab train --resume {run}" in lines[-1] and "Traceback" not in log.read_text()
    ckpt = latest_checkpoint(run)
    assert step_of(ckpt) == logged_step(run) >= 4  # not a single step lost
    assert f"at step {step_of(ckpt)}," in lines[-1]


def test_stop_on_signal_restores_the_previous_handlers():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    stop = T.StopOnSignal()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # the first one only asks
        with pytest.raises(KeyboardInterrupt):  # the second one stops at once
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# ---------------------------------------------------------------------------
# A disk that fills up
# ---------------------------------------------------------------------------


def tree_digest(folder) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_checkpoint_that_cannot_be_written_fails_clearly_and_keeps_the_last_one(corpus, cache, tmp_path):
    run, log = tmp_path / "run", tmp_path / "run.log"
    env = {"GPT2LAB_CACHE": cache}
    first = forked_cli.start(["train", "--out", run, *crash_args(corpus, EVERY)], log, env)
    first.join(300)
    assert first.exitcode == 0, log.read_text()
    before = tree_digest(run / "checkpoints")
    size = (latest_checkpoint(run) / "model.safetensors").stat().st_size
    # Resume to twice the steps with every file capped below a checkpoint's weights:
    # config.json and metrics still fit, the next checkpoint does not.
    log.write_text("")
    proc = forked_cli.start(["train", "--resume", run, "--max-steps", 2 * EVERY], log, env,
                            file_size_limit=size // 2)
    proc.join(300)
    assert proc.exitcode == 2, log.read_text()
    lines = [l for l in log.read_text().splitlines() if l.strip()]
    assert len(lines) == 2 and lines[0].startswith("resuming"), lines  # the resume notice, then the error
    error = lines[1]
    assert error.startswith("gpt2lab train: error: cannot write checkpoint") and "File too large" in error
    assert f"step_{2 * EVERY:08d}" in error and f"last good checkpoint {latest_checkpoint(run)} is intact" in error
    assert f"gpt2lab train --resume {run}" in error
    assert tree_digest(run / "checkpoints") == before  # nothing half-written left behind, nothing lost
    load_model(run)
    state = torch.load(latest_checkpoint(run) / runs.STATE_FILE, weights_only=True)
    assert state["step"] == EVERY


def test_export_to_a_full_disk_is_a_one_line_error(tmp_path):
    from gpt2lab.checkpoint import save_model
    from gpt2lab.tokenizer import gpt2_tokenizer

    save_model(GPT(GPTConfig.from_preset("tiny")), gpt2_tokenizer(), tmp_path / "m")
    log = tmp_path / "export.log"
    proc = forked_cli.start(["export", "--model", tmp_path / "m", "--to", tmp_path / "hf"], log,
                            file_size_limit=100_000)
    proc.join(120)
    lines = [l for l in log.read_text().splitlines() if l.strip()]
    assert proc.exitcode == 2 and len(lines) == 1, log.read_text()
    assert "model.safetensors: File too large; free some disk space" in lines[0]
    assert not any(p.name.startswith(".") for p in (tmp_path / "hf").iterdir())  # no temporary file left


# ---------------------------------------------------------------------------
# Safe loading
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(corpus, tmp_path_factory, cache):
    os.environ["GPT2LAB_CACHE"] = cache
    run = tmp_path_factory.mktemp("small") / "run"
    T.train(T.TrainConfig(data=str(corpus), out=str(run), tokenizer="gpt2", batch_size=2, max_steps=2,
                          warmup_steps=1, eval_every=2, eval_batches=1, checkpoint_every=2, sample_tokens=0,
                          progress=False),
            GPTConfig.from_preset("tiny", n_ctx=16), log=lambda *a: None)
    return run


def copy_run(run, dest):
    import shutil

    shutil.copytree(run, dest)
    return dest


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(small_run, tmp_path):
    run = copy_run(small_run, tmp_path / "run")
    ckpt = latest_checkpoint(run)
    marker = tmp_path / "pwned"
    state = torch.load(ckpt / runs.STATE_FILE, weights_only=True)
    state["payload"] = Booby(marker)
    torch.save(state, ckpt / runs.STATE_FILE)
    with pytest.raises(UserError, match="refusing to load .*training_state.pt: it calls io.open when loaded"):
        T.train(T.TrainConfig(), resume=run, log=lambda *a: None)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # the same file, unpickled without the guard, does run code
        torch.load(ckpt / runs.STATE_FILE, weights_only=True)
    torch.load(ckpt / runs.STATE_FILE, weights_only=False)
    assert marker.exists()


def test_a_checkpoint_from_another_config_or_tokenizer_is_refused(small_run, tmp_path):
    run = copy_run(small_run, tmp_path / "run")
    meta_path = latest_checkpoint(run) / MODEL_META
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "model": {**meta["model"], "d_model": 128}}))
    with pytest.raises(UserError, match=r"has model d_model 128 but the run was configured with 64; it belongs "
                                         "to another run"):
        T.train(T.TrainConfig(), resume=run, log=lambda *a: None)
    meta_path.write_text(json.dumps({**meta, "tokenizer": {"kind": "char", "chars": "abc"}}))
    with pytest.raises(UserError, match=r"has tokenizer kind 'char' but the run was trained with 'gpt2'"):
        T.train(T.TrainConfig(), resume=run, log=lambda *a: None)
    run_config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**run_config, "tokenizer": {"kind": "char", "chars": "xyz" * 40}}))
    with pytest.raises(UserError, match=r"has tokenizer chars that differs from the run's; it belongs to another"):
        T.train(T.TrainConfig(), resume=run, log=lambda *a: None)


def test_resume_clears_what_a_killed_run_left_half_written(small_run, tmp_path):
    run = copy_run(small_run, tmp_path / "run")
    (run / "checkpoints" / ".tmp-step_00000004-12345").mkdir()
    (run / "checkpoints" / ".tmp-step_00000004-12345" / "model.safetensors").write_bytes(b"half")
    (run / ".config.json.tmp12345").write_text("{")
    T.train(T.TrainConfig(), resume=run, train_overrides={"max_steps": 2}, log=lambda *a: None)
    assert not [p for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if ".tmp" in p.name]
    assert (run / "config.json").is_file()


# ---------------------------------------------------------------------------
# Numerical guards
# ---------------------------------------------------------------------------


def quick_cfg(corpus, out, **kw):
    base = dict(data=str(corpus), out=str(out), batch_size=4, max_steps=10, warmup_steps=2, lr=1e-2, min_lr=1e-3,
                eval_every=100, eval_batches=1, checkpoint_every=4, sample_tokens=0, progress=False, seed=3)
    return T.TrainConfig(**{**base, **kw})


@pytest.fixture
def in_process(monkeypatch):
    """For runs inside the test process: no loss.png (slow, and not what these
    tests are about), and torch's thread count put back afterwards."""
    monkeypatch.setattr(T, "refresh_plot", lambda run_dir: None)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def poison_loss(monkeypatch, steps: dict):
    """Make the training loss of the given (1-based) steps ``loss * factor``."""
    real_loss, calls = GPT.loss, {"n": 0}

    def loss(self, *a, **k):
        out = real_loss(self, *a, **k)
        if not self.training:
            return out
        calls["n"] += 1
        return out * steps[calls["n"]] if calls["n"] in steps else out

    monkeypatch.setattr(GPT, "loss", loss)


def test_on_nan_skip_skips_the_step_and_keeps_training(in_process, corpus, tmp_path, monkeypatch, capsys):
    poison_loss(monkeypatch, {6: float("nan")})
    run = tmp_path / "run"
    result = T.train(quick_cfg(corpus, run, on_nan="skip"), GPTConfig.from_preset("tiny", n_ctx=16),
                     log=lambda *a: None)
    assert result.step == 10 and latest_checkpoint(run).name == "step_00000010"
    rows = {r["step"]: r for r in losses(run)}
    assert "loss" not in rows[6] and rows[6]["skipped"].startswith("loss nan")
    assert all(math_finite(r["loss"]) for s, r in rows.items() if s != 6)
    model, _ = load_model(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert "step 6: loss nan" in capsys.readouterr().err


def math_finite(x) -> bool:
    return x == x and abs(x) != float("inf")


def test_nan_gradient_with_a_finite_loss_also_stops(in_process, corpus, tmp_path, monkeypatch):
    real_loss, calls = GPT.loss, {"n": 0}

    def loss(self, *a, **k):  # a finite loss whose gradient is infinite
        out = real_loss(self, *a, **k)
        calls["n"] += self.training
        if self.training and calls["n"] == 7:
            out.register_hook(lambda grad: grad * float("inf"))
        return out

    monkeypatch.setattr(GPT, "loss", loss)
    run = tmp_path / "run"
    with pytest.raises(T.TrainingDiverged, match=r"at step 7 .*gradient norm (nan|inf).*step_00000004"):
        T.train(quick_cfg(corpus, run), GPTConfig.from_preset("tiny", n_ctx=16), log=lambda *a: None)
    assert latest_checkpoint(run).name == "step_00000004"


def test_a_loss_spike_is_reported(in_process, corpus, tmp_path, monkeypatch, capsys):
    poison_loss(monkeypatch, {8: 10.0})
    run = tmp_path / "run"
    T.train(quick_cfg(corpus, run, log_every=5), GPTConfig.from_preset("tiny", n_ctx=16), log=lambda *a: None)
    rows = {r["step"]: r for r in losses(run)}
    assert rows[8].get("spike") is True  # logged although 8 is not a multiple of --log-every
    assert not any(r.get("spike") for s, r in rows.items() if s != 8)
    assert "step 8: loss spike" in capsys.readouterr().err
    T.train(quick_cfg(corpus, tmp_path / "off", spike_factor=0), GPTConfig.from_preset("tiny", n_ctx=16),
            log=lambda *a: None)
    assert not any(r.get("spike") for r in losses(tmp_path / "off"))


# ---------------------------------------------------------------------------
# Resources: memory of data preparation
# ---------------------------------------------------------------------------

# Peak RSS from /proc: VmHWM belongs to this process image alone, whereas
# getrusage's ru_maxrss survives exec and would report the (big) pytest parent.
PREPARE = """
import re, sys
from gpt2lab.data import parse_source, prepare_tokens
from gpt2lab.tokenizer import load_tokenizer
shards = prepare_tokens(parse_source(sys.argv[1]), load_tokenizer("gpt2"), progress=False)
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
print(shards.header["n_tokens"], peak_kb // 1024)
"""


def prepare_peak_rss(path, cache) -> tuple[int, int]:
    """(tokens, peak resident MB) of tokenizing ``path`` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"), GPT2LAB_CACHE=str(cache))
    proc = subprocess.run([sys.executable, "-c", PREPARE, str(path)], capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr
    tokens, peak = proc.stdout.split()
    return int(tokens), int(peak)


@pytest.mark.slow
def test_data_preparation_memory_stays_flat_on_a_big_corpus(tmp_path):
    """Tokenizing a corpus 50 times bigger (113 MB, 26 million tokens) costs
    (almost) no more memory: the text is streamed and the tokens go straight
    to disk.  Held as Python objects, the big one would take over a gigabyte
    (the text as one str, plus a list of 26 million int objects)."""
    line = " ".join(WORDS) + "\n"
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text(line * 20_000, encoding="utf-8")
    with open(big, "w", encoding="utf-8") as f:
        for _ in range(50):
            f.write(line * 20_000)
    tokens_small, peak_small = prepare_peak_rss(small, tmp_path / "c1")
    tokens_big, peak_big = prepare_peak_rss(big, tmp_path / "c2")
    assert tokens_big > 49 * tokens_small
    print(f"\npreparing {small.stat().st_size / 1e6:.0f} MB: peak {peak_small} MB; "
          f"{big.stat().st_size / 1e6:.0f} MB ({tokens_big:,} tokens): peak {peak_big} MB")
    # What may grow is one tokenizer batch in flight (data._batches: up to 8 MiB of text, ~2 M tokens
    # as Python ints, about 100 MB), never the corpus: reading the text whole alone would add 113 MB
    # more, and holding its tokens as Python ints over a gigabyte.
    assert peak_big - peak_small < 160 and peak_big < 1024
