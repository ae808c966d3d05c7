"""`gpt2lab serve` in a subprocess, as a user starts it: on 127.0.0.1, a free
port (``--port 0``; the URL is read from what it prints), stopped with Ctrl-C."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import torch

from conftest import ROOT


def tiny_model(folder, seed: int = 0):
    """A random `tiny` GPT-2 (GPT-2's tokenizer), initialised wide enough that
    greedy text is not one token repeated; saved as a gpt2lab checkpoint."""
    from gpt2lab.checkpoint import save_model
    from gpt2lab.model import GPT, GPTConfig
    from gpt2lab.tokenizer import gpt2_tokenizer

    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_preset("tiny", init_range=0.5)).eval()
    save_model(model, gpt2_tokenizer(), folder)
    return folder


@contextlib.contextmanager
def serving(model, *flags, timeout: float = 120):
    """Yield ``(base_url, process)``; stop the server with SIGINT at the end
    and check that it stopped cleanly."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "gpt2lab", "serve", "--model", str(model), "--port", "0",
                             *map(str, flags)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = read_url(proc, timeout)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError("gpt2lab serve did not stop within 30 s of Ctrl-C")


def read_url(proc, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"gpt2lab serve exited ({proc.wait()}): {proc.stderr.read()}")
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        if found:
            return found.group(0).rstrip("/")
    raise AssertionError("gpt2lab serve printed no URL in time")
