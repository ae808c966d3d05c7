import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


WORDS = ("the king is dead long live the queen my lord what news from rome "
         "speak soft the night is young and full of stars").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small text corpus (about 60k tokens), fast to tokenize."""
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (8,), generator=g).tolist())
             for _ in range(6000)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def token_cache(tmp_path_factory, monkeypatch):
    """One token cache for the session's training tests (tokenizing once)."""
    monkeypatch.setenv("GPT2LAB_CACHE", str(tmp_path_factory.getbasetemp() / "token-cache"))


def run_cli(*args, cwd=None, timeout=300, env=None):
    """Run ``python -m gpt2lab ARGS`` in a subprocess, as a user would."""
    full_env = dict(os.environ, **(env or {}))
    src = os.path.join(ROOT, "src")
    full_env["PYTHONPATH"] = src + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "gpt2lab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=full_env)


def kill_9_after(argv, metrics, lines: int, timeout: float = 600) -> bool:
    """Start ``gpt2lab ARGV`` and SIGKILL it once ``metrics`` (a run's
    metrics.jsonl) has ``lines`` lines: a crash at a moment we choose.
    Returns whether it got that far (rather than finishing, or timing out)."""
    import signal
    import time

    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "gpt2lab", *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= lines:
            break
        time.sleep(0.02)
    reached = proc.poll() is None and metrics.is_file() and len(metrics.read_text().splitlines()) >= lines
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return reached


def assert_user_error(proc, *fragments):
    """One-line error on stderr, non-zero exit, no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    for frag in fragments:
        assert frag.lower() in lines[0].lower(), lines[0]


class Booby:
    """A booby-trapped pickle: unpickling it calls ``open(path, "w")``, creating
    a file, the stand-in for any code a pickle can run while it is loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def random_hf_model(preset: str = "tiny", seed: int = 0, **overrides):
    """A randomly initialised transformers GPT2LMHeadModel for a gpt2lab preset,
    with LayerNorm parameters and biases moved away from 1/0 so that a swapped
    or ignored parameter cannot hide in a parity test.  (Skips the test without transformers.)"""
    transformers = pytest.importorskip("transformers")

    from gpt2lab.checkpoint import hf_config
    from gpt2lab.model import GPTConfig

    torch.manual_seed(seed)
    cfg = GPTConfig.from_preset(preset, **overrides)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config(cfg))).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return cfg, hf


@pytest.fixture
def threads():
    """``threads(n)`` sets torch's thread count until the test ends (the split
    matrix-vector product of ``model.matmul`` depends on it)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


# Sized so that several cores split the token embedding's gradient (its backward
# runs in parallel past 32,768 elements: here 32 x 32 tokens x d_model 64).
PARALLEL_SIZED = ["--preset", "tiny", "--n-ctx", "32", "--batch-size", "32", "--warmup-steps", "2",
                  "--eval-batches", "1", "--sample-tokens", "0", "--progress", "false", "--seed", "9"]


def metric_rows(run_dir):
    """Every row of metrics.jsonl, wall-clock fields left out."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_sec", "elapsed")} for r in rows]


def final_state(run_dir) -> dict:
    """Every tensor and number of a run's newest checkpoint: weights, AdamW
    moments, sampler and RNG states, step (wall-clock time left out)."""
    from safetensors.torch import load_file

    from gpt2lab.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    flat = {f"weights.{k}": v for k, v in load_file(ckpt / "model.safetensors").items()}

    def walk(prefix, obj):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}.{i}", v)
        elif not prefix.endswith(".elapsed"):
            flat[prefix] = obj

    walk("state", torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=True))
    return flat


def assert_same_run(a, b):
    """Bit for bit: every metrics row (timings aside) and every final tensor."""
    rows_a, rows_b = metric_rows(a), metric_rows(b)
    first = next((ra["step"] for ra, rb in zip(rows_a, rows_b) if ra != rb), None)
    assert rows_a == rows_b, f"the runs part at step {first}"
    state_a, state_b = final_state(a), final_state(b)
    assert state_a.keys() == state_b.keys()
    differ = [k for k, v in state_a.items()
              if not (torch.equal(v, state_b[k]) if isinstance(v, torch.Tensor) else v == state_b[k])]
    assert not differ, f"final tensors differ: {differ[:8]}"


def count_calls(monkeypatch, owner, name: str) -> list:
    """Replace ``owner.name`` until the test ends with a wrapper that records the
    shape of each call's first argument, to know which path the code took."""
    calls = []
    real = getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


@pytest.fixture
def bmm_calls(monkeypatch):
    """Calls to torch.bmm: the split path of `model.matmul`."""
    return count_calls(monkeypatch, torch, "bmm")


@pytest.fixture
def packed_calls(monkeypatch):
    """Calls to oneDNN's product of packed weights: the packed path of `model.matmul`."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this build of PyTorch has no oneDNN")
    return count_calls(monkeypatch, torch.ops.mkldnn, "_linear_pointwise")
