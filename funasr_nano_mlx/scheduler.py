"""One thread owns the model and decodes the segments of every request in flight in shared batches.

MLX is not safe to drive from several threads at once, and one batch of many segments costs about as
much as one segment on an accelerator, so the server hands each request's audio to this scheduler
and a single worker thread does all model work (segmenting too: an FSMN-VAD is an MLX model).

Each request is cut into segments exactly as `transcribe` cuts a file, and its segments wait in its
own queue. A worker step takes up to `max_batch` segments round-robin over the requests in flight,
oldest request first, one segment each per round: a request that arrives while a long file is being
decoded gets a place in the very next batch, and a long file alone still fills whole batches.
Within a request segments go in time order, so a streaming client receives text from the start.
A batch is decoded by transcribe.py's own batched path (`BatchDecoder.run`: padded encoder batch,
left-padded LLM batch with per-row prompts); its tokens equal decoding each file alone.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import numpy as np

from .audio import SAMPLE_RATE
from .decoding import DEFAULT_BATCH_SIZE
from .segment import DEFAULT_MAX_SEGMENT_MS
from .transcribe import Segment, add_timings, finish_transcription, SegmentJob, segment_jobs, BatchDecoder

log = logging.getLogger("funasr_nano_mlx.serve")

# notify(kind, payload), called on the worker thread: ("segment", (index, Segment)) as each segment
# is decoded, then ("done", Transcription) or ("error", exception), and nothing after that.
Notify = Callable[[str, object], None]


@dataclass(eq=False)
class Work:
    """One request: its audio and prompt settings, and its segments as they are decoded."""

    name: str
    samples: np.ndarray | None  # 16 kHz mono; released when the request is finished
    prompt: dict  # transcribe's language / hotwords / itn for this request's segments
    notify: Notify
    duration: float = 0.0  # seconds, set from the samples
    pending: deque = field(default_factory=deque)  # (index, SegmentJob) not yet decoded, in time order
    segments: list = field(default_factory=list)  # Segment (or None until decoded) per index
    timings: dict = field(default_factory=dict)
    cancelled: bool = False  # set from the server's thread (client gone, timeout); the worker drops the rest
    finished: bool = False  # done or failed: nothing more is sent

    def __post_init__(self):
        self.duration = len(self.samples) / SAMPLE_RATE


@dataclass
class Stats:
    """Counters the server reports at /metrics (read and written under the scheduler's lock)."""

    batches: int = 0
    segments_decoded: int = 0
    batch_sizes: Counter = field(default_factory=Counter)  # segments in a batch -> batches of that size
    requests_done: int = 0
    requests_failed: int = 0
    requests_cancelled: int = 0
    segments_dropped: int = 0  # segments of cancelled requests that were never decoded
    warm_up_seconds: float = 0.0  # the short clip decoded before the first request (BatchDecoder.warm_up)

    def as_dict(self) -> dict:
        return {
            "batches": self.batches,
            "segments_decoded": self.segments_decoded,
            "batch_sizes": {str(size): count for size, count in sorted(self.batch_sizes.items())},
            "max_batch_size": max(self.batch_sizes, default=0),
            "requests_done": self.requests_done,
            "requests_failed": self.requests_failed,
            "requests_cancelled": self.requests_cancelled,
            "segments_dropped": self.segments_dropped,
            "warm_up_seconds": round(self.warm_up_seconds, 3),
        }


class Scheduler:
    """Pools the segments of all submitted requests and decodes them in batches on one worker thread.

    `load() -> (model, tokenizer)` runs on the worker thread, which owns the model from then on: MLX
    streams belong to a thread, and a model loaded on one thread fails when evaluated on another
    ("There is no Stream(cpu, 0) in current thread"). Load errors are raised here, in the caller.
    `segmenter` is "auto" (as transcribe), None, or a function that loads one on the worker (an
    FSMN-VAD is an MLX model too). `decode(pipeline, jobs, timings) -> list[Decoded]` decodes one
    batch; the default is transcribe.py's batched path; a test passes one that fails. `batch_wait`:
    seconds after a batch shared by several requests during which the next batch waits to fill up.
    """

    def __init__(
        self,
        load: Callable[[], tuple],
        *,
        segmenter="auto",
        max_batch: int = DEFAULT_BATCH_SIZE,
        max_segment_seconds: float = DEFAULT_MAX_SEGMENT_MS / 1000,
        batch_wait: float = 0.0,
        decode=None,
    ):
        self._decode = decode or BatchDecoder.run
        self.segmenter, self.max_batch, self.batch_wait = segmenter, max_batch, batch_wait
        self.max_segment_ms = round(max_segment_seconds * 1000)
        self.stats = Stats()
        self._cond = threading.Condition()
        self._arrived: list[Work] = []  # submitted, not yet segmented (guarded by _cond)
        self._active: list[Work] = []  # segmented, in arrival order (the worker's own)
        self._closed = False
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, args=(load,), name="funasr-nano-mlx decoder", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._load_error is not None:
            raise self._load_error

    # -- called from other threads ---------------------------------------------------------------

    def submit(self, work: Work) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._arrived.append(work)
            self._cond.notify()

    def cancel(self, work: Work) -> None:
        """Drop what is left of a request (its client left or timed out); a batch under way finishes."""
        with self._cond:
            work.cancelled = True
            self._cond.notify()

    def snapshot(self) -> dict:
        with self._cond:
            waiting = sum(len(work.pending) for work in self._active if not work.cancelled)
            in_scheduler = len(self._arrived) + len(self._active)
            return {
                **self.stats.as_dict(),
                "requests_in_scheduler": in_scheduler,
                "segments_waiting": waiting,
                "max_batch": self.max_batch,
            }

    def close(self, timeout: float | None = None) -> None:
        """Stop after the batch under way; requests still waiting fail with 'shutting down'."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- the worker thread ---------------------------------------------------------------------------

    def _has_work(self) -> bool:
        # A cancelled request counts: it is dropped at the next step even if nothing else waits.
        return self._closed or bool(self._arrived) or any(work.pending or work.cancelled for work in self._active)

    def _setup(self, load) -> bool:
        try:
            model, tokenizer = load()
            if callable(self.segmenter):
                self.segmenter = self.segmenter()
            # The server's settings are transcribe's defaults: duration-scaled budgets, the repetition guard.
            self.pipeline = BatchDecoder(model, tokenizer, None, (), True, None, True)
            start = time.monotonic()
            self.pipeline.warm_up()
            self.stats.warm_up_seconds = time.monotonic() - start
        except BaseException as err:  # raised in the thread that built the scheduler, after the clean-up
            self._load_error = err
            return False
        self._ready.set()
        return True

    def _work(self, load) -> None:
        try:
            if self._setup(load):
                self._serve()
        finally:
            # Free the model and this thread's MLX streams on this thread, with no work queued: a
            # stream left for the thread's exit (or the process's) aborts it ("terminate called
            # without an active exception"), often. mlx-lm's server frees its model the same way.
            self.pipeline = None
            gc.collect()
            mx.synchronize()
            mx.clear_streams()
            self._ready.set()  # a failed load is reported now, with this thread's streams gone

    def _serve(self) -> None:
        shared_until = 0.0  # the last batch served several requests: its clients may come back until then
        while True:
            with self._cond:
                self._cond.wait_for(self._has_work)
                if time.monotonic() < shared_until:
                    # The clients a shared batch has just answered send their next requests within
                    # milliseconds; starting the next batch without them splits steady clients into
                    # groups that take turns (measured: 8 clients in batches of 3 and 5). A lone client
                    # never waits: its batches are not shared.
                    self._cond.wait_for(self._batch_full, timeout=shared_until - time.monotonic())
                if self._closed:
                    break
                arrived, self._arrived = self._arrived, []
            batch = []
            try:
                for work in arrived:
                    self._split(work)
                self._drop_cancelled()
                batch = self._pick()
                if batch:
                    self._run(batch)
                if len({id(entry[0]) for entry in batch}) > 1:
                    shared_until = time.monotonic() + self.batch_wait
            except Exception as err:  # a bug here must not stop the worker: fail whom it touched
                log.exception("scheduler step failed")
                for work in {id(w): w for w in arrived + [entry[0] for entry in batch]}.values():
                    self._fail(work, err)
        shutdown = RuntimeError("the server is shutting down")
        with self._cond:
            left, self._arrived = self._active + self._arrived, []
        for work in left:
            self._fail(work, shutdown)

    def _split(self, work: Work) -> None:
        """Cut the request into segments as `transcribe` would cut the file alone."""
        try:
            jobs = segment_jobs(0, work.name, work.samples, self.segmenter, self.max_segment_ms)
        except Exception as err:  # the segmenter failed on this audio: this request only
            self._fail(work, err)
            return
        for job in jobs:
            job.prompt = work.prompt
        work.pending.extend(enumerate(jobs))
        work.segments = [None] * len(jobs)
        with self._cond:
            self._active.append(work)
        if not jobs:  # nothing long enough to hold speech: an empty transcript, as transcribe gives
            self._complete(work)

    def _batch_full(self) -> bool:
        waiting = sum(len(work.pending) for work in self._active) + len(self._arrived)  # each arrival >= 1
        return self._closed or waiting >= self.max_batch

    def _drop_cancelled(self) -> None:
        for work in [work for work in self._active if work.cancelled]:
            with self._cond:
                self.stats.requests_cancelled += 1
                self.stats.segments_dropped += len(work.pending)
            work.pending.clear()
            self._retire(work)

    def _pick(self) -> list[tuple[Work, int, SegmentJob]]:
        """Up to max_batch segments: one per request per round, oldest request first."""
        batch: list[tuple[Work, int, SegmentJob]] = []
        queues = [work for work in self._active if work.pending]
        while queues and len(batch) < self.max_batch:
            for work in queues[: self.max_batch - len(batch)]:
                batch.append((work, *work.pending.popleft()))
            queues = [work for work in queues if work.pending]
        return batch

    def _run(self, batch: list[tuple[Work, int, SegmentJob]]) -> None:
        jobs = [job for _, _, job in batch]
        timings: dict = {}
        try:
            decoded = self._decode(self.pipeline, jobs, timings)
        except Exception as err:
            if len(batch) == 1:
                log.exception("decoding %s failed", batch[0][0].name)
                self._fail(batch[0][0], err)
                return
            # Which request's segment broke the batch is unknown: decode each segment alone, so that
            # only the request whose segment fails is failed (alone gives the same tokens as batched).
            for entry in batch:
                if not entry[0].finished:
                    self._run([entry])
            return
        with self._cond:
            self.stats.batches += 1
            self.stats.segments_decoded += len(batch)
            self.stats.batch_sizes[len(batch)] += 1
        log.debug("batch of %d segments from %d requests", len(batch), len({id(entry[0]) for entry in batch}))
        seconds = sum(job.seconds for job in jobs)
        for (work, index, job), result in zip(batch, decoded):
            if work.finished or work.cancelled:
                continue
            work.segments[index] = self.pipeline.segment(job, result)
            add_timings(work.timings, timings, job.seconds / seconds)
            _notify(work, "segment", (index, work.segments[index]))
            if not work.pending and all(segment is not None for segment in work.segments):
                self._complete(work)

    def _complete(self, work: Work) -> None:
        segments: list[Segment] = work.segments
        result = finish_transcription(work.name, work.duration, segments, work.timings)
        with self._cond:
            self.stats.requests_done += 1
        self._retire(work)
        _notify(work, "done", result)

    def _fail(self, work: Work, err: Exception) -> None:
        if work.finished:
            return
        work.pending.clear()
        with self._cond:
            self.stats.requests_failed += 1
        self._retire(work)
        _notify(work, "error", err)

    def _retire(self, work: Work) -> None:
        work.finished = True
        work.samples = None  # its segments' slices go with the last batch that holds them
        with self._cond:
            if work in self._active:
                self._active.remove(work)


def _notify(work: Work, kind: str, payload) -> None:
    try:
        work.notify(kind, payload)
    except Exception:  # the request's event loop is gone (server stopping): nothing to tell
        log.debug("could not notify %s of %s", work.name, kind, exc_info=True)
