"""The model thread: requests take turns on one model, one step at a time.

The model is not safe to share between threads (its hooks record into one
place, and two threads would fight over the cores anyway), and it must not
run on the server's event loop, which would then stop answering.  So one
thread owns it.  A request becomes a :class:`Job`: an iterator that does one
step of model work each time it is advanced (for a completion, one new token
for every row of the request).  :class:`ModelWorker` advances every live job
in turn, so concurrent clients each see their own stream appear token by
token.  A job whose client has gone is marked ``cancelled`` by the event
loop and dropped by the worker before its next step.  Anything a job yields
or raises is handed to the event loop through an ``asyncio.Queue``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable, Iterator

from .errors import APIError, UserError

log = logging.getLogger("gpt2lab.server")


class Job:
    """One request's work: ``make_steps()`` is called on the worker thread and
    gives an iterator; each item it yields is passed to the event loop."""

    def __init__(self, make_steps: Callable[[], Iterator], loop: asyncio.AbstractEventLoop):
        self.make_steps, self.loop = make_steps, loop
        self.steps: Iterator | None = None
        self.results: asyncio.Queue = asyncio.Queue()
        self.cancelled = False

    def send(self, kind: str, value) -> None:
        self.loop.call_soon_threadsafe(self.results.put_nowait, (kind, value))

    async def items(self):
        """Yield what the job yields; return (via StopAsyncIteration) when done; raise its error."""
        while True:
            kind, value = await self.results.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                self.value = value
                return


class ModelWorker:
    """The thread that runs the model, advancing every live job by one step per round."""

    def __init__(self, max_jobs: int):
        self.max_jobs = max_jobs
        self.jobs: list[Job] = []
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = False
        self.steps = 0  # steps done since the start, over all jobs (reported by /health)
        self.thread = threading.Thread(target=self.run, name="gpt2lab-model", daemon=True)
        self.thread.start()

    def submit(self, make_steps: Callable[[], Iterator]) -> Job:
        job = Job(make_steps, asyncio.get_running_loop())
        with self.lock:
            if len(self.jobs) >= self.max_jobs:
                raise APIError(429, f"the server is busy with {len(self.jobs)} requests (the limit, set by "
                                    "--max-requests); try again in a moment", kind="rate_limit_error",
                               code="too_many_requests")
            self.jobs.append(job)
        self.wake.set()
        return job

    def busy(self) -> int:
        return len(self.jobs)

    def run(self) -> None:
        while not self.stopping:
            with self.lock:
                jobs = list(self.jobs)
            if not jobs:
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            for job in jobs:
                if self.advance(job):
                    with self.lock:
                        self.jobs.remove(job)

    def advance(self, job: Job) -> bool:
        """One step of ``job``; True when it is over (finished, failed or cancelled)."""
        try:
            if job.cancelled:
                if job.steps is not None:
                    job.steps.close()
                return True
            if job.steps is None:
                job.steps = job.make_steps()
            item = next(job.steps)
            self.steps += 1
            job.send("item", item)
            return False
        except StopIteration as done:
            job.send("done", done.value)
        except APIError as e:
            job.send("error", e)
        except (UserError, ValueError) as e:
            job.send("error", APIError(400, str(e)))
        except Exception as e:  # noqa: BLE001 - logged here, never shown to the client
            log.exception("request failed")
            job.send("error", APIError(500, f"internal error ({type(e).__name__}); see the server's log",
                                       kind="server_error"))
        return True

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()


async def run_job(worker: ModelWorker, fn: Callable[[], object]):
    """Run ``fn()`` on the model thread and return its result."""

    def steps():
        return fn()
        yield  # a generator that finishes in one step

    job = worker.submit(steps)
    async for _ in job.items():
        pass
    return job.value
