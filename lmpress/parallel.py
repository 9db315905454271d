"""Work spread over processes or a Ray cluster: the segments of an archive, the documents of a corpus.

A segment is coded from its own bytes and checks out on its own, so workers can code the segments of one input
anywhere and in any order: N workers write exactly the archive one process writes, and any archive decodes
segment by segment. A document is scored on its own too. Each worker holds one loaded model (a process of this
machine, or a Ray actor, on a GPU where the cluster has them); the driver hands out work in input order, keeps a
bounded number of units in flight (memory stays bounded whatever the input's size) and takes results back in
order. With a ``Journal``, every finished unit is kept on disk as it arrives, so a run killed halfway goes on
where it stopped when started again, with nothing lost or coded twice.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import api
from .codec import format as fmt
from .codec.segments import decode_segment
from .codec.settings import Settings
from .dictionary import Dictionary
from .errors import FormatError, LmpressError
from .exact.runner import compute_threads
from .lens.analysis import load_lens_model, local_settings, score_document, scoring_setup
from .lens.scores import TokenScores
from .models import LanguageModel

IN_FLIGHT = 3  # units handed out per worker at a time: one running, the next ones queued, none idle
RUN = "run.json"  # a journal's identity: what run its units belong to
_UNIT = re.compile(r"\d{9}-[0-9a-f]{16}")  # a journal's unit: its index and a digest of its bytes


@dataclass(frozen=True)
class Job:
    """What every worker loads: models (by spec), a dictionary, coding settings, compute threads and device, and
    the engine a lens job scores with (``lens.analysis.ENGINES``; coding is always exact)."""

    models: tuple[str | None, ...] = (None,)
    dictionary: Dictionary | None = None
    settings: dict = field(default_factory=dict)  # codec.settings.Settings' fields, less the dictionary's primer
    threads: int = 1
    device: str | None = None
    engine: str = "exact"


class Worker:
    """One worker's models, and the units of work it does. Lives in a worker process or a Ray actor."""

    def __init__(self, job: Job):
        self.job = job
        self._compressor: api.Compressor | None = None
        self._decoding: dict[bytes, tuple] = {}
        self.error: LmpressError | None = None  # a model that cannot be loaded: every unit reports it
        try:
            self.models = [load_lens_model(spec, job.engine, job.device) for spec in job.models]
        except LmpressError as e:
            self.error = e

    def call(self, method: str, *args: Any) -> Any:
        """Run one unit: what a pool sends."""
        if self.error is not None:
            raise self.error
        return getattr(self, method)(*args)

    def coding_model(self) -> LanguageModel:
        """The model archives are coded with: the first, on the exact engine."""
        model = self.models[0]
        if not isinstance(model, LanguageModel):
            raise LmpressError(f"{model.name} is loaded on the float engine, which scores but does not code")
        return model

    def compressor(self) -> api.Compressor:
        if self._compressor is None:
            self._compressor = api.Compressor(self.coding_model(), dictionary=self.job.dictionary, **self.job.settings)
        return self._compressor

    def header(self) -> bytes:
        """The archive header this worker's compressor writes."""
        return self.compressor().header.to_bytes()

    def encode(self, data: bytes, offset: int) -> bytes:
        """One segment frame: the bytes of ``data``, found at ``offset`` in the input."""
        return self.compressor().segment(data, offset)[0]

    def decode(self, header: bytes, frame: bytes, member: int, start: int, index: int) -> bytes:
        """The original bytes of segment ``index`` of member ``member`` (from 0; its first archive byte ``start``),
        checked against its crc32; errors name the member as ``format.in_member`` does."""
        try:
            if header not in self._decoding:
                model, dictionary = self.coding_model(), self.job.dictionary
                self._decoding[header] = api.decoding(model, dictionary, fmt.whole_header(header))
            lm, settings = self._decoding[header]
            try:
                segment = fmt.whole_frame(frame)
            except FormatError as e:
                raise FormatError(f"{e} in segment {index}") from None
            if not isinstance(segment, fmt.Segment):
                raise FormatError(f"corrupted archive (segment {index} is not a segment frame)")
            where = fmt.segment_name(index, segment.offset, segment.raw_size)
            with compute_threads(self.job.threads):
                return decode_segment(lm, segment, settings, where)
        except LmpressError as e:
            raise fmt.in_member(e, member, start) from None

    def score(self, data: bytes, detail: int, local: int, rolling: bool = False) -> list[tuple]:
        """(model name, scores, short-context scores or None) of one document under each model."""
        out = []
        with compute_threads(self.job.threads):
            for lm in self.models:
                model, settings = scoring_setup(lm, self.job.dictionary, **self.job.settings)
                scores = score_document(model, data, settings, detail, rolling=rolling)
                short = score_document(model, data, local_settings(settings, local)) if local else None
                out.append((lm.name, scores, short))
        return out


# --- Pools: where workers live ------------------------------------------------------------------------


class Pool:
    """Workers that run units and hand back futures (``concurrent.futures.Future``)."""

    workers: int

    def submit(self, method: str, *args: Any) -> concurrent.futures.Future:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_WORKER: Worker | None = None  # a worker process's own worker


def _start_process(job: Job, parent: int) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to answer: it stops the workers
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    _WORKER = Worker(job)


def _exit_with(parent: int) -> None:
    """End this worker process as soon as its driver is gone (killed, say), rather than finish a unit nobody
    will take: minutes of cores that a resumed run needs."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _run_in_process(method: str, args: tuple) -> Any:
    if _WORKER is None:
        raise RuntimeError("a unit of work sent to a process that is not a worker")
    return _WORKER.call(method, *args)


class ProcessPool(Pool):
    """Worker processes on this machine, each with its share of the cores (a fresh interpreter each: spawn).

    A worker that dies (killed, out of memory) fails the run with an error, never a wait for ever.
    """

    def __init__(self, job: Job, workers: int):
        self.workers = workers
        # Read by the thread pools of each new process as it starts, and processes start when work first comes:
        # so for the pool's whole life (else two processes' idle thread pools spin on the same cores).
        self._environment = contextlib.ExitStack()
        self._environment.enter_context(_environment(_thread_limits(job.threads)))
        self._pool = concurrent.futures.ProcessPoolExecutor(
            workers, multiprocessing.get_context("spawn"), _start_process, (job, os.getpid())
        )

    def submit(self, method: str, *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()

        def settle(done: concurrent.futures.Future) -> None:
            if done.cancelled():  # by close(): nobody waits for it any more
                future.cancel()
                return
            error = done.exception()
            if isinstance(error, BrokenProcessPool):
                error = LmpressError("a worker process died (killed, or out of memory: try fewer --workers)")
            if error is None:
                future.set_result(done.result())
            else:
                future.set_exception(error)

        self._pool.submit(_run_in_process, method, args).add_done_callback(settle)
        return future

    def close(self) -> None:
        """Stop at once: units still running are not wanted any more (done, an error, or Ctrl-C)."""
        for pid in list(getattr(self._pool, "_processes", None) or {}):  # pid: Process; no public way to end them
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        self._pool.shutdown(wait=True, cancel_futures=True)  # one call that joins: a first one would not
        del self._pool  # its queues' semaphores are released now, not at an interpreter exit that Ctrl-C skips
        gc.collect()
        self._environment.close()


class RayPool(Pool):
    """Ray actors, one loaded model each: one per GPU where the cluster has GPUs, else one per ``threads`` CPUs."""

    def __init__(self, job: Job, workers: int | None, address: str | None):
        if address is None and "ray" not in sys.modules:
            # The Ray started here is for this machine alone: every Ray process then listens on the loopback
            # address only, reachable from nowhere else (Ray's switch for one-machine clusters, read on import).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            import ray
        except ImportError:
            raise LmpressError("--ray needs Ray: pip install 'lmpress[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            except (ConnectionError, ValueError, RuntimeError) as e:
                hint = "" if os.environ.get("RAY_AUTH_MODE") else " (with token authentication: RAY_AUTH_MODE=token)"
                where = f" at {address}" if address else ""
                raise LmpressError(f"cannot reach the Ray cluster{where}{hint}: {' '.join(str(e).split())}") from None
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        room = gpus or cpus // job.threads  # actors that can be placed: the others would wait for ever
        workers = workers or max(1, room)
        if workers > room:
            has = f"{gpus} GPUs" if gpus else f"{cpus} CPUs"
            raise LmpressError(
                f"the Ray cluster has {has}: room for {room} workers of {job.threads} threads each, not {workers}"
            )
        if gpus:
            job = dataclasses.replace(job, device="cuda")
        self.workers = workers
        actor = ray.remote(Worker).options(
            num_cpus=job.threads, num_gpus=1 if gpus else 0, runtime_env={"env_vars": _thread_limits(job.threads)}
        )
        self._actors: list[Any] = [actor.remote(job) for _ in range(workers)]
        self._busy = [0] * workers

    def submit(self, method: str, *args: Any) -> concurrent.futures.Future:
        i = min(range(self.workers), key=self._busy.__getitem__)  # the actor with the least work queued
        self._busy[i] += 1
        future: concurrent.futures.Future = concurrent.futures.Future()

        def settle(ref_future: concurrent.futures.Future) -> None:
            self._busy[i] -= 1
            error = ref_future.exception()
            cause = getattr(error, "cause", None)
            if error is None:
                future.set_result(ref_future.result())
            elif isinstance(cause, LmpressError):  # the worker's own, not Ray's wrapper
                future.set_exception(cause)
            else:  # an actor that died, a node that left: Ray's words, on one line
                future.set_exception(LmpressError(f"a Ray worker failed: {' '.join(str(error).split())[:300]}"))

        self._actors[i].call.remote(method, *args).future().add_done_callback(settle)
        return future

    def close(self) -> None:
        for actor in self._actors:
            with contextlib.suppress(Exception):
                self._ray.kill(actor)


def make_pool(job: Job, workers: int | None, ray: bool = False, address: str | None = None) -> Pool:
    """Ray actors (``ray``, on the cluster at ``address``, else a local one), or ``workers`` local processes."""
    if ray or address:
        return RayPool(job, workers, address)
    return ProcessPool(job, workers or os.cpu_count() or 1)


def _thread_limits(threads: int) -> dict[str, str]:
    """The environment that sizes a new process's thread pools (OpenMP, MKL, numba): read as it starts."""
    return dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"), str(threads))


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- Running units in order ---------------------------------------------------------------------------


class Journal:
    """Finished units of a resumable run, one file each in a folder beside the output, with what the run is
    (``identity``): a run started again with the same identity takes them instead of computing them again.

    Each file is written under a temporary name and renamed, and carries a digest of its bytes in its name (not a
    crc32: the crc32 of a sealed frame is the same constant for every one), so a run killed at any moment leaves
    only whole, checkable units behind.
    """

    def __init__(self, folder: Path, identity: dict):
        self.folder = folder
        self.identity = json.loads(json.dumps(identity))  # as it reads back from the file
        self.kept: dict[int, Path] = {}
        if folder.exists():
            try:
                same = json.loads((folder / RUN).read_text()) == self.identity
            except FileNotFoundError:
                if any(folder.iterdir()):
                    raise LmpressError(f"{folder}: exists and is not an lmpress journal") from None
                same = False
            except (OSError, ValueError):
                same = False
            if same:
                for f in folder.iterdir():
                    index, _, digest = f.name.partition("-")
                    if index.isdigit() and digest == _digest(f.read_bytes()):
                        self.kept[int(index)] = f
            else:
                self._clear()
        folder.mkdir(exist_ok=True)
        (folder / RUN).write_text(json.dumps(self.identity))

    def _clear(self) -> None:
        """Remove this journal's own files (and nothing else that may be in its folder)."""
        for f in self.folder.iterdir():
            if f.name == RUN or _UNIT.fullmatch(f.name) or f.name.endswith(".tmp"):
                f.unlink()
        self.kept.clear()

    def get(self, index: int) -> bytes | None:
        return self.kept[index].read_bytes() if index in self.kept else None

    def put(self, index: int, data: bytes) -> None:
        path = self.folder / f"{index:09d}-{_digest(data)}"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.kept[index] = path

    def remove(self) -> None:
        """The run is done: its files go, and the folder too once empty."""
        self._clear()
        with contextlib.suppress(OSError):
            self.folder.rmdir()


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def ordered(
    pool: Pool, method: str, units: Iterable[tuple[Any, ...]], journal: Journal | None = None
) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(arguments, result) of ``method`` on each unit's arguments, in the units' order, with at most
    ``IN_FLIGHT`` units per worker handed out or waiting to be returned. With a ``journal`` (results are then
    bytes), a unit already in it is not computed again, and each new result goes into it the moment it arrives,
    whatever its place."""
    queue: deque[list[Any]] = deque()  # [index, arguments, future, result or None], in input order
    pending = iter(enumerate(units))
    exhausted = False
    while True:
        while not exhausted and len(queue) < IN_FLIGHT * pool.workers:
            try:
                index, args = next(pending)
            except StopIteration:
                exhausted = True
                break
            saved = journal.get(index) if journal else None
            future = pool.submit(method, *args) if saved is None else None
            queue.append([index, args, future, saved])
        if not queue:
            return
        if queue[0][3] is None:
            running = [slot[2] for slot in queue if slot[3] is None]
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for slot in queue:
                if slot[3] is None and slot[2] in done:
                    slot[3] = result = slot[2].result()  # a worker's error is raised here
                    if journal is not None:
                        journal.put(slot[0], result)
            continue
        _, args, _, result = queue.popleft()
        yield args, result


# --- The two directions, and scoring ------------------------------------------------------------------


def segments_of(blocks: Iterable[bytes], settings: Settings) -> Iterator[tuple[bytes, int]]:
    """(bytes, offset) of each segment of the input, cut as ``Compressor`` cuts it."""
    buffer, offset = bytearray(), 0

    def cut(final: bool) -> Iterator[tuple[bytes, int]]:
        nonlocal offset
        for piece in api.take_segments(buffer, settings, final):
            yield piece, offset
            offset += len(piece)

    for block in blocks:
        buffer += block
        yield from cut(final=False)
    yield from cut(final=True)


def compress(
    pool: Pool,
    blocks: Iterable[bytes],
    settings: Settings,
    journal: Journal | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> Iterator[bytes]:
    """The archive of the input ``blocks``, in pieces: byte for byte what ``api.compress`` writes with the same
    settings, whatever the number of workers."""
    yield pool.submit("header").result()
    total = 0
    for (piece, _), frame in ordered(pool, "encode", segments_of(blocks, settings), journal):
        total += len(piece)
        if progress is not None:
            progress(len(piece), 8 * len(frame))
        yield frame
    yield fmt.End(total).to_bytes()


def decompress(
    pool: Pool,
    archive: fmt.Buffer,
    journal: Journal | None = None,
    progress: Callable[[float, float], None] | None = None,
    layout: list[fmt.MemberLayout] | None = None,
) -> Generator[bytes, None, None]:
    """The original bytes of an archive (every member), segment by segment, in order; each segment checked
    as a plain decoder checks it. Raises before anything is decoded if the archive's layout is cut short.
    ``layout``: ``format.members`` of the archive, if the caller has it already."""
    view = memoryview(archive)
    layout = list(fmt.members(view)) if layout is None else layout
    units = (
        (bytes(view[slice(*member.header)]), bytes(view[a:b]), m, member.header[0], i)
        for m, member in enumerate(layout)
        for i, (a, b) in enumerate(member.segments)
    )
    results = ordered(pool, "decode", units, journal)
    for m, member in enumerate(layout):
        tally = fmt.Tally()
        try:
            for a, b in member.segments:
                offset, raw_size = fmt.segment_position(view[a:b])
                tally.segment(offset, raw_size)
                _, data = next(results)
                if progress is not None:
                    progress(len(data), 8 * (b - a))
                yield data
            tally.end(fmt.whole_end(view[slice(*member.end)]).total_size)
        except FormatError as e:
            raise fmt.in_member(e, m, member.header[0]) from None


def original_size(archive: fmt.Buffer, layout: list[fmt.MemberLayout]) -> int | None:
    """What the archive's end markers say it holds (None if one is damaged): a total for progress bars."""
    view = memoryview(archive)
    try:
        return sum(fmt.whole_end(view[slice(*member.end)]).total_size for member in layout)
    except LmpressError:
        return None


def score(
    pool: Pool, documents: list[tuple[str, bytes]], detail: int = 0, local: int = 0, rolling: bool = False
) -> Iterator[tuple[str, bytes, str, TokenScores, TokenScores | None]]:
    """(name, data, model name, scores, short-context scores) of each document under each of the job's models,
    in order: what the analyses of ``cli.lens`` take, to the bit what one process computes."""
    results = ordered(pool, "score", ((data, detail, local, rolling) for _, data in documents))
    for (name, data), (_, per_model) in zip(documents, results):
        for model_name, scores, short in per_model:
            yield name, data, model_name, scores, short
