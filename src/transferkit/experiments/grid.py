"""The bookkeeping of ``compare``: the grid of (strategy, size, seed) cells, finished cells recorded and resumed,
and the claims derived from them — the **data-efficiency factor** (how many training examples per class
``scratch`` needs to match a transfer strategy, interpolated on the log scale) and the **speed-up** (scratch's
time to its best vs the strategy's time to the same accuracy). Pure functions of the results; no training here.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..distributed import is_main_process
from ..errors import TransferKitError, bad_value
from ..strategies import STRATEGIES
from ..training.checkpoint import write_json_atomic

logger = logging.getLogger(__name__)

RESULTS = "results.json"


@dataclass(frozen=True)
class Cell:
    strategy: str
    per_class: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.strategy}-n{self.per_class}-s{self.seed}"


@dataclass
class CellResult:
    """One finished run of the grid; ``curve`` holds (epoch, seconds, val_accuracy) per epoch, the seconds counted
    from the start of the run (setup — data, model, caches — included)."""

    strategy: str
    per_class: int
    seed: int
    test_accuracy: float
    macro_f1: float
    seconds: float
    curve: list[dict[str, float]] = field(default_factory=list)

    @property
    def cell(self) -> Cell:
        return Cell(self.strategy, self.per_class, self.seed)

    def time_to(self, accuracy: float) -> tuple[int, float] | None:
        """(epoch, seconds) when validation accuracy first reaches ``accuracy``; None if it never does."""
        for point in self.curve:
            if point["val_accuracy"] >= accuracy:
                return int(point["epoch"]), float(point["seconds"])
        return None

    def convergence(self, fraction: float = 0.95) -> tuple[int, float] | None:
        """Epochs and seconds until the run first reaches ``fraction`` of its own best validation accuracy."""
        if not self.curve:
            return None
        return self.time_to(fraction * max(p["val_accuracy"] for p in self.curve))


Trainer = Callable[[Cell, Path], CellResult]


def run_grid(cells: Sequence[Cell], out: Path, trainer: Trainer,
             meta: dict[str, Any] | None = None) -> list[CellResult]:
    """Run every cell not yet in ``out/results.json`` (in order), recording each as it finishes (with ``meta``, e.g.
    the data and model, so a half-run grid's file says what it is)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if meta is not None:
        check_same_grid(out, meta)
    done = {r.cell: r for r in load_results(out)}
    todo = [c for c in cells if c not in done]
    if len(todo) < len(cells):
        logger.info("Resuming %s: %d of %d cells done earlier, not rerun", out, len(cells) - len(todo), len(cells))
    started, finished = time.perf_counter(), 0
    for index, cell in enumerate(cells, start=1):
        if cell in done:
            continue
        elapsed = time.perf_counter() - started
        eta = f", about {_duration(elapsed / finished * (len(todo) - finished))} left" if finished else ""
        logger.info("[%d/%d] %s (%s elapsed%s)", index, len(cells), cell.name, _duration(elapsed), eta)
        done[cell] = trainer(cell, out / "runs" / cell.name)
        finished += 1
        if is_main_process():  # under torchrun every process runs the grid; one writes it
            write_json_atomic(out / RESULTS, {**(meta or {}), "cells": [asdict(r) for r in done.values()]})
    return [done[c] for c in cells]


def check_same_grid(out: Path, meta: dict[str, Any]) -> None:
    """Refuse to resume a grid in ``out`` that was started with other settings: its finished cells would be mixed
    with cells trained differently."""
    path = Path(out) / RESULTS
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    before = {"data": saved.get("data"), "model": saved.get("model"), **(saved.get("options") or {})}
    now = {"data": meta.get("data"), "model": meta.get("model"), **(meta.get("options") or {})}
    differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if differ:
        changes = "; ".join(f"{k}: {before.get(k)!r} before, {now.get(k)!r} now" for k in differ)
        raise TransferKitError(f"{out} holds a grid started with other settings ({changes}). Fix: rerun with the "
                               "same options to resume it, or pass another --out for a new grid.")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def load_results(out: Path) -> list[CellResult]:
    path = Path(out) / RESULTS
    if not path.is_file():
        return []
    return [CellResult(**row) for row in json.loads(path.read_text(encoding="utf-8"))["cells"]]


def grid(strategies: Sequence[str], sizes: Sequence[int], seeds: int,
         scratch_sizes: Sequence[int] = ()) -> list[Cell]:
    """The cells: every strategy at every size and seed, plus extra sizes for ``scratch`` only."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise bad_value("strategies", ",".join(unknown), f"a comma-separated subset of {', '.join(STRATEGIES)}")
    if not sizes or any(n < 1 for n in sizes):
        raise bad_value("per_class", list(sizes), "comma-separated positive integers, e.g. 10,30,100")
    if seeds < 1:
        raise bad_value("seeds", seeds, "a positive integer")
    cells = [Cell(s, n, seed) for s in strategies for n in sorted(set(sizes)) for seed in range(seeds)]
    extra = sorted(set(scratch_sizes) - set(sizes))
    if extra and "scratch" not in strategies:
        raise TransferKitError("--scratch-per-class needs 'scratch' among --strategies.")
    cells += [Cell("scratch", n, seed) for n in extra for seed in range(seeds)]
    return cells


def _grouped(results: Iterable[CellResult], key: Callable[[CellResult], Any]) -> dict[Any, list[CellResult]]:
    groups: dict[Any, list[CellResult]] = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    return groups


def mean_accuracy(results: Sequence[CellResult], strategy: str) -> dict[int, float]:
    """Mean test accuracy over seeds, per training-set size."""
    by_size = _grouped((r for r in results if r.strategy == strategy), lambda r: r.per_class)
    return {n: sum(r.test_accuracy for r in runs) / len(runs) for n, runs in sorted(by_size.items())}


class Standing(NamedTuple):
    """One strategy at one size, over its seeds."""

    strategy: str
    accuracy: float  # mean test accuracy
    spread: float  # half the range of test accuracies
    seconds: float  # mean wall time


def ranking(results: Sequence[CellResult], per_class: int) -> list[Standing]:
    """The strategies run at ``per_class``, best test accuracy first."""
    by_strategy = _grouped((r for r in results if r.per_class == per_class), lambda r: r.strategy)
    rows = []
    for strategy, runs in by_strategy.items():
        accs = [r.test_accuracy for r in runs]
        rows.append(Standing(strategy, sum(accs) / len(accs), (max(accs) - min(accs)) / 2,
                             sum(r.seconds for r in runs) / len(runs)))
    return sorted(rows, key=lambda row: -row.accuracy)


def examples_needed(curve: dict[int, float], accuracy: float) -> float | None:
    """Smallest size at which ``curve`` (size -> accuracy) reaches ``accuracy``, interpolated linearly in
    log(size) between the measured sizes; None when it never gets there."""
    sizes = sorted(curve)
    if not sizes:
        return None
    if curve[sizes[0]] >= accuracy:
        return float(sizes[0])
    for low, high in zip(sizes, sizes[1:], strict=False):
        if curve[low] < accuracy <= curve[high]:
            t = (accuracy - curve[low]) / (curve[high] - curve[low])
            return math.exp(math.log(low) + t * (math.log(high) - math.log(low)))
    return None


def derived_factors(results: Sequence[CellResult], unit: str = "/class") -> list[dict[str, Any]]:
    """Per transfer strategy and size: the data-efficiency factor and the speed-up over ``scratch``.

    Args:
        unit: what a size counts, written after it in the text (``"/class"``; segmentation: ``" training images"``).
    """
    scratch_curve = mean_accuracy(results, "scratch")
    if not scratch_curve:
        return []
    scratch_runs = [r for r in results if r.strategy == "scratch"]
    rows = []
    for strategy in sorted({r.strategy for r in results} - {"scratch"}):
        for n, accuracy in mean_accuracy(results, strategy).items():
            needed = examples_needed(scratch_curve, accuracy)
            row: dict[str, Any] = {"strategy": strategy, "per_class": n, "test_accuracy": accuracy,
                                   "scratch_per_class_needed": needed,
                                   "data_efficiency": needed / n if needed is not None else None,
                                   "data_efficiency_text": (f"{needed / n:.1f}x" if needed is not None else
                                                            f"> {max(scratch_curve) / n:.1f}x (scratch never gets "
                                                            f"there by {max(scratch_curve)}{unit})")}
            row.update(_speedup(results, strategy, n, scratch_runs))
            rows.append(row)
    return rows


def _speedup(results: Sequence[CellResult], strategy: str, n: int, scratch_runs: Sequence[CellResult]) -> dict:
    """Scratch's time to its best validation accuracy vs this strategy's time to the same accuracy (same size,
    averaged over seeds)."""
    pairs = []
    for run in (r for r in results if r.strategy == strategy and r.per_class == n):
        scratch = next((s for s in scratch_runs if s.per_class == n and s.seed == run.seed), None)
        if scratch is None or not scratch.curve:
            continue
        best = max(p["val_accuracy"] for p in scratch.curve)
        scratch_time = scratch.time_to(best)[1]
        reached = run.time_to(best)
        pairs.append((scratch_time, reached[1] if reached else None))
    reached = [(s, t) for s, t in pairs if t is not None]
    if not pairs:
        return {"speedup": None, "speedup_text": "no scratch run of this size"}
    if not reached:
        return {"speedup": None, "speedup_text": "never reaches scratch's best"}
    scratch_s = sum(s for s, _ in reached) / len(reached)
    strategy_s = sum(t for _, t in reached) / len(reached)
    factor = scratch_s / max(strategy_s, 1e-9)
    note = "" if len(reached) == len(pairs) else f" ({len(pairs) - len(reached)} seed(s) never reach it)"
    return {"speedup": factor, "speedup_text": f"{factor:.1f}x{note}"}
