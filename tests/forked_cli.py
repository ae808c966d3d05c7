"""Start ``gpt2lab`` commands as real processes that start in milliseconds.

A fresh ``python -m gpt2lab`` spends seconds importing torch, the
optimizer's compiler hooks, matplotlib and GPT-2's BPE tables before it
does anything.  The crash tests start a dozen training processes, so they
fork them instead from a *fork server* that imported all that once
(``multiprocessing``'s ``forkserver`` start method, with this module
preloaded).  Each child is still its own process: it has its own pid, its own
signal handlers and its own files, and SIGKILL ends it as abruptly as any.
The server itself never runs torch code, so forking it is safe.
"""

import multiprocessing
import os
import resource
import signal
import sys
import threading

import torch._dynamo  # noqa: F401 - imported by the first optimizer; costly

import gpt2lab.cli  # noqa: F401
import gpt2lab.plots  # noqa: F401 - matplotlib
import gpt2lab.train  # noqa: F401
from tqdm import tqdm
from gpt2lab.tokenizer import gpt2_tokenizer

gpt2_tokenizer()  # read once here; the children inherit it, cached
# tqdm's default lock is a multiprocessing semaphore that a SIGKILLed child
# can never release (Python then warns about leaked semaphores at exit);
# these children are single-threaded processes, a thread lock is enough.
tqdm.set_lock(threading.RLock())


def _child(argv: list[str], log: str, env: dict, file_size_limit: int | None) -> None:
    """The body of a child: output to ``log``, then ``gpt2lab ARGV``, exiting with its status."""
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)  # stdout and stderr lines land in the order they were printed
    if file_size_limit is not None:
        # A disk that fills up: writing past the limit fails with EFBIG
        # (SIGXFSZ, which would kill the process instead, is ignored).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
    from gpt2lab.cli import main

    code = main([str(a) for a in argv])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


def context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def start(argv, log, env=None, file_size_limit=None) -> multiprocessing.Process:
    """Start ``gpt2lab ARGV`` in a forked child; its stdout and stderr go to ``log``."""
    proc = context().Process(target=_child, args=(list(argv), str(log), dict(env or {}), file_size_limit))
    proc.start()
    return proc
