"""The request queue of the web app: one worker thread, one job at a time, first come first served.

A job is a function of the :class:`Job` (it calls :meth:`Job.tick` through the progress hook) returning
PIL images that carry their provenance record in ``image.info["latentdiff"]``. Progress counts the
U-Net's evaluations: each of the samplers the app offers (DDPM, DDIM, DPM-Solver++(2M), Euler) evaluates
the denoiser once per step, and classifier-free guidance batches ε(x_t, c) and ε(x_t, ∅) into one
evaluation, so ``done / total`` is steps taken over steps planned. Cancelling sets a flag the hook
checks at the next step, which then raises :class:`Cancelled` out of the sampler; the VAE checks it too
before decoding, so a job cancelled after its last step stops there. Every step is bounded by the limits
(:mod:`latentdiff.limits`), so a cancel acts within one step.

Job ids carry a random part: another client cannot guess the id of someone's job.
"""
from __future__ import annotations

import io
import itertools
import queue
import secrets
import sys
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from latentdiff.errors import UserError

STATES = ("queued", "running", "done", "error", "cancelled")


class Cancelled(Exception):
    """Raised inside a running job when its cancel flag is set."""


@dataclass
class Job:
    """One request: ``run(job) -> [PIL images]``, planned as ``total`` U-Net evaluations of ``unet`` and decoded
    by ``vae`` (the queue's pipeline's when None)."""

    id: str
    kind: str
    run: Callable[["Job"], list]
    total: int
    unet: Any = None
    vae: Any = None
    state: str = "queued"
    done: int = 0
    error: str | None = None
    pngs: list[bytes] = field(default_factory=list)
    records: list[str] = field(default_factory=list)
    cancel_flag: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    def tick(self) -> None:
        """One U-Net evaluation happened; stop the job here if it was cancelled."""
        self.check()
        self.done = min(self.done + 1, self.total)

    def check(self) -> None:
        """Stop the job here (raise :class:`Cancelled`) if it was cancelled."""
        if self.cancel_flag.is_set():
            raise Cancelled

    def finish(self, images: list) -> None:
        """Keep each image as PNG bytes with its provenance chunk (the file the page offers)."""
        from latentdiff.provenance import Record, png_info

        for img in images:
            record = Record.from_json(img.info["latentdiff"])
            buf = io.BytesIO()
            img.save(buf, format="PNG", pnginfo=png_info(record))
            self.pngs.append(buf.getvalue())
            self.records.append(img.info["latentdiff"])
        self.done, self.state = self.total, "done"


class JobQueue:
    """FIFO of jobs run by one daemon worker on ``pipe`` (whose U-Net the progress hook watches, unless a
    job names another: the web app's inpainting model).

    At most ``max_waiting`` jobs wait at once (more is refused with a message); the ``keep`` most
    recent finished jobs keep their images."""

    def __init__(self, pipe, max_waiting: int = 16, keep: int = 64):
        self.pipe, self.max_waiting, self.keep = pipe, max_waiting, keep
        self.jobs: "OrderedDict[str, Job]" = OrderedDict()
        self._waiting: "queue.Queue[Job]" = queue.Queue()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._worker = threading.Thread(target=self._loop, name="latentdiff-worker", daemon=True)
        self._worker.start()

    def submit(self, kind: str, run: Callable[[Job], list], total: int, unet=None, vae=None) -> Job:
        with self._lock:
            waiting = sum(j.state == "queued" for j in self.jobs.values())
            if waiting >= self.max_waiting:
                raise UserError(f"the queue is full ({waiting} requests waiting); try again when one finishes")
            job = Job(id=f"{next(self._ids)}-{secrets.token_hex(8)}", kind=kind, run=run, total=total,
                      unet=unet, vae=vae)
            self.jobs[job.id] = job
            self._forget_old()
        self._waiting.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self.jobs.get(job_id)

    def position(self, job: Job) -> int:
        """1 for the next job to run, 0 when not waiting."""
        if job.state != "queued":
            return 0
        with self._lock:
            ahead = [j for j in self.jobs.values() if j.state == "queued"]
        return ahead.index(job) + 1 if job in ahead else 0

    def cancel(self, job: Job) -> None:
        job.cancel_flag.set()
        if job.state == "queued":
            job.state, job.finished = "cancelled", time.time()

    def _forget_old(self) -> None:
        finished = [k for k, j in self.jobs.items() if j.state in ("done", "error", "cancelled")]
        for k in finished[:max(0, len(finished) - self.keep)]:
            del self.jobs[k]

    def _loop(self) -> None:
        while True:
            job = self._waiting.get()
            if job.cancel_flag.is_set():
                job.state = "cancelled"
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        job.state, job.started = "running", time.time()
        unet = self.pipe.unet if job.unet is None else job.unet
        vae = getattr(self.pipe, "vae", None) if job.vae is None else job.vae
        hooks = [unet.register_forward_hook(lambda module, args, output: job.tick())]
        if vae is not None:
            hooks.append(vae.decoder.register_forward_pre_hook(lambda module, args: job.check()))
        try:
            job.finish(job.run(job))
        except Cancelled:
            job.state = "cancelled"
        except UserError as exc:
            job.state, job.error = "error", str(exc)
        except Exception as exc:  # the server keeps serving; the page shows the message
            traceback.print_exc(file=sys.stderr)
            job.state, job.error = "error", f"internal error: {type(exc).__name__}: {exc}"
        finally:
            for hook in hooks:
                hook.remove()
            job.finished = time.time()
