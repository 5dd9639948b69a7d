"""Many processes, one run: the processes of a ``torchrun`` / ``accelerate launch`` job seen as one :class:`World`.

A single process is a world of one: every method below is then a no-op or an identity, so one code path serves
both. The decisions this module carries out (the README's "More than one device" explains them to users):

- ``--batch-size`` is the **global** batch. Every process draws the same batches from the run's seeded RNG and
  takes its share of each (:class:`ShardedBatches`: B / N samples), and DDP averages the gradients — so steps per
  epoch, the LR schedule and the data order do not depend on the number of processes, learning rates are not
  rescaled, and a checkpoint resumes exactly under another process count (that divides the batch).
- After drawing an epoch's batches, processes other than rank 0 re-seed their RNG, so augmentation and dropout
  differ between processes (rank 0 draws exactly what a single process would).
- Validation and test sets are split into contiguous shares (:meth:`World.share`); sums are reduced across
  processes, so every sample counts exactly once whatever the set's size or the batch sampler.
- Caches are built by one process (:meth:`World.first_on_each_file_system`): rank 0 first, then the first process
  of every other node (a cache hit when the cache folder is on shared storage, its own build when it is not), then
  the others read them.
- An error in any process ends every process (:meth:`World.together`): the failing process posts its one-line
  message in the job's rendezvous store; the others stop with that message and exit code 2 instead of waiting in a
  collective. A process that dies without a word (killed) breaks the collectives of the others, which stop too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch.utils.data import Sampler

from .errors import TransferKitError

logger = logging.getLogger(__name__)

T = TypeVar("T")
SEED_STRIDE = 7919  # process r re-seeds with (epoch seed + r * SEED_STRIDE)
POLL_SECONDS = 0.2  # how often a process looks for a failure posted by another
GRACE_SECONDS = 10.0  # how long a stopping process may take before it is ended hard


def launched_processes() -> int:
    """Processes in this launch (``WORLD_SIZE`` set by ``torchrun`` / ``accelerate launch``; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` / ``accelerate launch`` job, or a single process (read from the environment)."""
    return int(os.environ.get("RANK", "0")) == 0


class JobStopped(TransferKitError):
    """This process stopped because another process of the job failed (or the launcher ended it).

    Attributes:
        cause_known: whether the message already names the other process's failure (else the failure handler
            looks for it: a SIGTERM from the launcher or a broken collective says only that something ended).
    """

    def __init__(self, message: str, cause_known: bool = True) -> None:
        super().__init__(message)
        self.cause_known = cause_known


LAUNCHER_STOPPED = ("this process was stopped by its launcher (SIGTERM): another process of the job ended, or the "
                    "job was cancelled. Fix: see the other processes' errors; a run that reached a checkpoint "
                    "continues with --resume RUN.")


@dataclass
class World:
    """The processes of one run. Build it with :func:`join`; ``World()`` is a single process on ``device``.

    Attributes:
        rank: this process's index, 0 to ``size - 1``; rank 0 writes the run folder.
        size: the number of processes.
        local_rank: the index on this machine (picks the GPU).
        device: where this process trains (``cuda:<local_rank>`` or ``cpu``).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # a client of the job's rendezvous store (key/value), for failures and barriers, and how to open another one
    # (the failure watcher's own connection)
    _store: Any = field(default=None, repr=False)
    _connect: Callable[[], Any] | None = field(default=None, repr=False)
    _barriers: int = field(default=0, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    # --- collectives (identities in a single process) ---------------------------------------------

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` in every process (any picklable value)."""
        if self.size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0, device=self._comm_device)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every process's ``value``, in rank order, in every process."""
        if self.size == 1:
            return [value]
        values: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(values, value)
        return values

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the processes (float64)."""
        if self.size == 1:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maxima over the processes."""
        if self.size == 1:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set in any process (so every process takes the same decision)."""
        return bool(self.max([float(flag)])[0])

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) in every process. DDP sends them at the start of each
        training step, but each process then updates its own copy from its slice; without SyncBatchNorm they would
        drift apart by the end of an epoch, and validation would run different models."""
        if self.size == 1:
            return
        for buffer in module.buffers():
            if buffer.is_floating_point() or buffer.dtype == torch.long:
                tensor = buffer.data.to(self._comm_device)
                torch.distributed.broadcast(tensor, src=0)
                buffer.data.copy_(tensor)

    def barrier(self) -> None:
        """Wait for every process (a collective: for short waits)."""
        if self.size > 1:
            torch.distributed.barrier()

    def wait_all(self) -> None:
        """Wait for every process, without a time limit: for waits as long as a cache build. A process that fails
        meanwhile ends the job through :meth:`together` instead of a timeout."""
        if self.size == 1:
            return
        if self._store is None:
            self.barrier()
            return
        self._barriers += 1
        key = f"barrier/{self._barriers}"
        self._store.add(key, 1)
        while self._store.add(key, 0) < self.size:
            time.sleep(0.05)

    @property
    def _comm_device(self) -> torch.device:
        return self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")

    # --- who does what ------------------------------------------------------------------------------

    def first_on_each_file_system(self, build: Callable[[], T]) -> T:
        """``build()`` in every process, in three waves, so that what it caches on disk is computed once per file
        system: rank 0 first; then the first process of each other node (which finds rank 0's entries on shared
        storage, or builds its own on a node-local disk); then every other process, which reads them."""
        if self.size == 1:
            return build()
        waves = (self.rank == 0, self.rank != 0 and self.is_local_main, not self.is_local_main)
        result: Any = _NOTHING
        for mine in waves:
            if mine:
                result = build()
            self.wait_all()
        return result

    def share(self, n: int) -> range:
        """This process's contiguous share of ``n`` items (evaluation: each item in exactly one process)."""
        return share_of(n, self.rank, self.size)

    def batches(self, batch_sampler: Sampler[list[int]] | Any) -> ShardedBatches:
        """This process's part of every batch that ``batch_sampler`` draws (see :class:`ShardedBatches`)."""
        return ShardedBatches(batch_sampler, self.rank, self.size)

    def worker_init_fn(self) -> Callable[[int], None] | None:
        """For ``DataLoader(worker_init_fn=...)``: data-loading workers of different processes get different random
        streams (``None`` in a single process: nothing changes)."""
        return None if self.size == 1 else _SeedWorker(self.rank)

    def check_batch_size(self, batch_size: int, resumed: bool = False) -> None:
        """The global batch must split evenly among the processes."""
        if batch_size % self.size == 0:
            return
        if resumed:
            counts = [str(n) for n in range(1, batch_size + 1) if batch_size % n == 0]
            raise TransferKitError(f"This run's batch size ({batch_size}, the global batch saved in its config) does "
                                   f"not divide among {self.size} processes. Fix: resume it with "
                                   f"{', '.join(counts[:-1])} or {counts[-1]} processes.")
        bigger = -(-batch_size // self.size) * self.size
        raise TransferKitError(f"The 'batch_size' parameter must be a multiple of the number of processes "
                               f"({self.size}): it is the global batch, split evenly among them. Got {batch_size} "
                               f"instead. Fix: pass --batch-size {bigger} (or {max(self.size, bigger - self.size)}).")

    # --- failures -----------------------------------------------------------------------------------

    def agreed(self, step: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``step`` in every process; a user error (:class:`TransferKitError`) in any of them is raised in all,
        the same message everywhere (for checks whose outcome may differ between processes, e.g. files one node
        cannot see)."""
        if self.size == 1:
            return step(*args, **kwargs)
        error, result = None, None
        try:
            result = step(*args, **kwargs)
        except TransferKitError as exc:
            error = exc
        failed = [(rank, p) for rank, p in enumerate(self.gather(None if error is None else str(error)))
                  if p is not None]
        if error is not None:
            raise error
        if failed:
            rank, message = failed[0]
            raise JobStopped(f"{message} (seen by process {rank} of {self.size})")
        return result  # type: ignore[return-value]

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Work that ends in every process when it fails in one: a failure here is posted for the others (who stop
        with its message: :class:`JobStopped`, exit code 2 at the command line); a failure posted by another process
        — or a SIGTERM from the launcher — stops this one. Leaving the block waits for every process; leaving it with
        an error leaves SIGTERM ignored (the job is ending; the process exits with its own code)."""
        if self.size == 1 or self._store is None:  # without a store: the launcher's SIGTERM, or a timeout
            yield
            return
        watcher = _FailureWatcher(self)
        previous = watcher.install()
        try:
            yield
            self.barrier()
        except BaseException as exc:
            stopped = self._failure(exc, watcher)
            if stopped is exc:
                raise
            raise stopped from exc
        finally:
            watcher.uninstall(previous)

    def _failure(self, exc: BaseException, watcher: _FailureWatcher) -> BaseException:
        """What this process raises for ``exc``: the failure another process posted, if there is one (it is the
        cause); else, for a broken collective or the launcher's SIGTERM, that a process ended without a word; else
        ``exc`` itself, posted for the others."""
        watcher.raised = True  # the launcher's SIGTERM, now likely, must not interrupt this
        if isinstance(exc, JobStopped) and exc.cause_known:
            return exc
        communication = isinstance(exc, JobStopped) or _is_communication_error(exc)
        try:  # a process posts its failure before it exits, so it is there by the time its peers notice
            posted = _posted_failure(self._store, self.size, wait=0.5 if communication else 0.0)
        except Exception:  # noqa: BLE001 - the store went with the process that hosted it
            posted = None
        if posted is not None and posted[0] != self.rank:
            return JobStopped(f"{posted[1]} (process {posted[0]} of {self.size} failed; this one stopped with it)")
        if isinstance(exc, JobStopped):
            return exc
        if communication:
            logger.debug("Communication failed: %s", exc)
            return JobStopped("another process of this job ended without reporting an error (killed, out of memory, "
                              "or its machine failed). Fix: see the launcher's report; a run that reached a checkpoint "
                              "continues with --resume RUN.")
        with contextlib.suppress(Exception):
            self._store.set(f"failure/{self.rank}", _first_line(exc))
            self._store.add("failures", 1)
        return exc


def join(cpu: bool = False, timeout: timedelta = timedelta(minutes=30)) -> World:
    """This process's :class:`World`: the job's process group when launched by ``torchrun`` / ``accelerate launch``
    (joined through Accelerate: gloo on CPUs, NCCL on GPUs), else a world of one.

    Args:
        cpu: train on the CPU even where GPUs are present.
        timeout: the longest a collective may wait (long waits, such as cache builds, use :meth:`World.wait_all`).
    """
    size = launched_processes()
    if size == 1:
        return World(device=torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu"))
    from accelerate import PartialState

    # cpu=True where there is no GPU: Accelerate otherwise treats a CPU-only launch as a single process.
    state = PartialState(cpu=cpu or not torch.cuda.is_available(), timeout=timeout)
    world = World(state.process_index, state.num_processes, state.local_process_index, state.device)
    # Keys unique to this call (a process may train several runs, e.g. compare's cells): rank 0 names them.
    call = world.broadcast(uuid.uuid4().hex)
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        logger.warning("No MASTER_ADDR/MASTER_PORT: a failure in one process may leave the others waiting until "
                       "the launcher or a %s timeout ends them.", timeout)
        return world
    # The rendezvous store of torchrun (or of rank 0): a key/value store every process can reach.
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    prefix = "/".join(["transferkit", os.environ.get("TORCHELASTIC_RUN_ID", "-"),
                       os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), call, ""])
    world._connect = lambda: torch.distributed.PrefixStore(prefix, torch.distributed.TCPStore(
        host, port, is_master=False, timeout=timeout, wait_for_workers=False))
    world._store = world._connect()
    return world


def share_of(n: int, rank: int, size: int) -> range:
    """Process ``rank``'s contiguous share of ``n`` items; the ``size`` shares cover each item exactly once."""
    return range(rank * n // size, (rank + 1) * n // size)


def leave() -> None:
    """End this process's part in the job's process group (at the end of a command)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class ShardedBatches(Sampler[list[int]]):
    """Each process's part of every batch of ``batch_sampler``: the batches are drawn identically in every process
    (the same seeded RNG), and process ``rank`` takes the ``rank``-th of ``size`` equal slices of each. A batch that
    does not split evenly (the last, without ``drop_last``) is padded with its own first samples.

    The batches are drawn exactly when the wrapped sampler would draw them (a single process is unchanged);
    right after the first draw of an epoch, processes other than rank 0 re-seed their RNG, so what happens to their
    samples next (augmentation, dropout) is not a copy of rank 0's.
    """

    def __init__(self, batch_sampler: Sampler[list[int]] | Any, rank: int = 0, size: int = 1) -> None:
        self.batch_sampler = batch_sampler
        self.rank = rank
        self.size = size
        self.batch_size = getattr(batch_sampler, "batch_size", None)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        return self._parts(iter(self.batch_sampler))

    def _parts(self, batches: Iterator[list[int]]) -> Iterator[list[int]]:
        for step, batch in enumerate(batches):
            if step == 0 and self.rank > 0:
                torch.manual_seed(torch.initial_seed() + SEED_STRIDE * self.rank)
            yield self.part(list(batch))

    def part(self, batch: list[int]) -> list[int]:
        if self.size == 1:
            return batch
        short = -len(batch) % self.size
        padded = batch + (batch * self.size)[:short]
        width = len(padded) // self.size
        return padded[self.rank * width:(self.rank + 1) * width]


class _SeedWorker:
    """A data-loading worker of process ``rank`` moves its torch seed by ``rank`` strides (picklable)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        import random

        seed = torch.initial_seed() + SEED_STRIDE * self.rank
        torch.manual_seed(seed)
        random.seed(seed)


class _FailureWatcher:
    """Stops this process when another one posts a failure: a thread polls the store; the main thread is
    interrupted (its SIGTERM handler raises :class:`JobStopped`), and if it cannot stop within a grace period (stuck
    in a collective) the process prints the error and exits with code 2."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.message: str | None = None
        self.stopped = threading.Event()
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self._watch, name="transferkit-failure-watcher", daemon=True)
        self.raised = False

    def install(self) -> Any:
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self.thread.start()
        return previous

    def uninstall(self, previous: Any) -> None:
        """Stop watching. After a failure the job is ending: the launcher's SIGTERM is ignored from now on, so this
        process reports its error and exits with its own code (2) instead of being cut off mid-message."""
        self.stopped.set()
        if self.raised:
            previous = signal.SIG_IGN if previous is not None else None
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a forked data-loading worker: die as by default
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.raised:
            return
        self.raised = True
        raise JobStopped(self.message or LAUNCHER_STOPPED, cause_known=self.message is not None)

    def _watch(self) -> None:
        try:
            store = self.world._connect()
        except Exception:  # noqa: BLE001 - no second connection: collectives still fail when a process dies
            return
        while not self.stopped.wait(POLL_SECONDS):
            try:
                posted = _posted_failure(store, self.world.size)
            except Exception as exc:  # noqa: BLE001 - the store went away: its host (launcher or rank 0) died
                posted = (-1, f"lost contact with the job's rendezvous store ({_first_line(exc)})")
            if posted is None or posted[0] == self.world.rank or self.stopped.is_set():
                continue
            rank, message = posted
            self.message = (f"{message} (process {rank} of {self.world.size} failed; this one stopped with it)"
                            if rank >= 0 else f"{message}; this process stopped")
            import _thread

            _thread.interrupt_main(signal.SIGTERM)
            if not self.stopped.wait(GRACE_SECONDS):
                print(f"error: {self.message}", file=sys.stderr, flush=True)
                os._exit(2)
            return


def _posted_failure(store: Any, size: int, wait: float = 0.0) -> tuple[int, str] | None:
    """(rank, message) of the first process that posted a failure, or ``None``; ``wait`` seconds for one to appear."""
    deadline = time.monotonic() + wait
    while True:
        if store.add("failures", 0) > 0:
            for rank in range(size):
                if store.check([f"failure/{rank}"]):
                    return rank, store.get(f"failure/{rank}").decode("utf-8", errors="replace")
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def _is_communication_error(exc: BaseException) -> bool:
    if isinstance(exc, torch.distributed.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in ("gloo", "Connection closed", "Connection reset",
                                                                     "NCCL", "Broken pipe"))


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    text = str(exc).strip().splitlines()
    if isinstance(exc, TransferKitError):
        return text[0] if text else type(exc).__name__
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


_NOTHING = object()
