"""The bookkeeping of ``compare``: the grid of (strategy, size, seed) cells, finished cells recorded and resumed,
and the claims derived from them. Pure functions of the results; no training here.

Two **data-efficiency factors** per transfer strategy and size n — how many training examples per class ``scratch``
needs for the strategy's test accuracy, interpolated on the log scale, divided by n:

- **converged**: against ``scratch`` at its own recipe, trained until its validation accuracy plateaus;
- **equal budget**: against ``scratch`` given the strategy's own training budget — the same number of passes over
  the training images (so, at equal size, the same number of images seen), cells with ``budget`` = the strategy.

And the **speed-up**: scratch's (converged) time to its best validation accuracy vs the strategy's time to the same
accuracy. With per-sample test results, every accuracy and factor gets a bootstrap interval (:mod:`.intervals`).
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

import numpy as np

from ..distributed import is_main_process
from ..errors import TransferKitError, bad_value
from ..strategies import STRATEGIES
from ..training.checkpoint import write_json_atomic
from .intervals import Resampling, distinguishable, interval, replicate_accuracies, replicate_statistic, unbits

logger = logging.getLogger(__name__)

RESULTS = "results.json"
SCRATCH = "scratch"
ADAPTED = "+"
"""``two-stage+dann``: a strategy trained with a domain-adaptation method (``compare --adapt``), a grid line of its
own."""
NOT_ADAPTED = ("scratch", "lora")
"""Strategies that run source-only whatever ``--adapt`` lists (adaptation starts from a pre-trained model, and LoRA
has no domain head)."""


def split_variant(label: str) -> tuple[str, str]:
    """``two-stage+dann`` -> (``two-stage``, ``dann``); ``two-stage`` -> (``two-stage``, ``none``)."""
    base, _, method = label.partition(ADAPTED)
    return base, method or "none"


@dataclass(frozen=True)
class Cell:
    """One run of the grid. ``budget`` is empty for a strategy at its own recipe; for a ``scratch`` cell it may
    name a transfer strategy whose training budget (passes over the training images) the cell is given instead."""

    strategy: str
    per_class: int
    seed: int
    budget: str = ""

    @property
    def name(self) -> str:
        return f"{self.strategy}-n{self.per_class}-s{self.seed}" + (f"-budget-{self.budget}" if self.budget else "")

    @property
    def base(self) -> str:
        """The strategy ``train`` runs (the label without its adaptation method)."""
        return split_variant(self.strategy)[0]

    @property
    def adapt(self) -> str:
        """The domain-adaptation method (``none``: source only)."""
        return split_variant(self.strategy)[1]

    @property
    def group(self) -> tuple[str, str, int]:
        """The cells that differ only by seed."""
        return self.strategy, self.budget, self.per_class


@dataclass
class CellResult:
    """One finished run of the grid; ``curve`` holds (epoch, seconds, val_accuracy) per epoch, the seconds counted
    from the start of the run (setup — data, model, caches — included).

    Attributes:
        budget: see :class:`Cell`.
        recipe: the ``train`` options the cell ran with (its strategy's recipe, the LR the search chose, the budget,
            the options given to ``compare``).
        epochs_run: epochs (an exact head fit counts as one) actually run; ``best_epoch``: the one whose weights
            were kept.
        stopped: ``plateau`` (early stopping ended the last phase), ``budget`` (it ran every epoch it had) or
            ``exact fit``.
        images_seen: training images through the network: the training set once per epoch on images, and once
            for the frozen backbone's feature cache.
        test_correct: per test sample, "1" right and "0" wrong (the same samples in every cell): what the
            bootstrap intervals resample.
        run: the run folder.
        target_accuracy: with ``--target-data`` whose test split is labelled (a built-in shifted pair), the test
            accuracy on the target domain (``None`` otherwise).
        retention: how much of the pre-trained function the run kept — top-1 agreement of its backbone under the
            original classifier with the pre-trained model on natural reference images (text: sentence-embedding
            cosine); ``None`` for scratch, dense tasks or ``--no-retention``.
    """

    strategy: str
    per_class: int
    seed: int
    test_accuracy: float
    macro_f1: float
    seconds: float
    curve: list[dict[str, float]] = field(default_factory=list)
    budget: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    epochs_run: int = 0
    best_epoch: int = 0
    stopped: str = ""
    images_seen: int = 0
    test_correct: str = ""
    run: str = ""
    target_accuracy: float | None = None
    retention: float | None = None

    @property
    def cell(self) -> Cell:
        return Cell(self.strategy, self.per_class, self.seed, self.budget)

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
    the data and model, so a half-run grid's file says what it is). The wall time of every call is added up in the
    file's ``wall_seconds`` (an interrupted and resumed grid counts each part)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if meta is not None:
        check_same_grid(out, meta)
    saved = _read(out)
    done = {r.cell: r for r in (CellResult(**row) for row in saved.get("cells", []))}
    wall = float(saved.get("wall_seconds", 0.0))
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
            write_json_atomic(out / RESULTS, {**saved, **(meta or {}), "cells": [asdict(r) for r in done.values()],
                                              "wall_seconds": round(wall + time.perf_counter() - started, 1)})
    if finished:
        logger.info("Grid done: %d cells run in %s", finished, _duration(time.perf_counter() - started))
    return [done[c] for c in cells]


def recipe_table(results: Sequence[CellResult]) -> list[dict[str, Any]]:
    """What each (strategy, budget) ran with, over sizes: the recipe's options (a range where they vary) and how
    the runs ended."""
    groups: dict[tuple[str, str], list[CellResult]] = {}
    for r in results:
        groups.setdefault((r.strategy, r.budget), []).append(r)
    rows = []
    for (strategy, budget), runs in sorted(groups.items()):
        keys = sorted({k for r in runs for k in r.recipe})
        values = {k: sorted({json.dumps(r.recipe.get(k)) for r in runs}) for k in keys}
        stopped: dict[str, int] = {}
        for r in runs:
            stopped[r.stopped] = stopped.get(r.stopped, 0) + 1
        rows.append({"strategy": strategy, "budget": budget,
                     "options": {k: [json.loads(v) for v in vs] for k, vs in values.items()},
                     "stopped": stopped, "epochs_run": [min(r.epochs_run for r in runs),
                                                        max(r.epochs_run for r in runs)]})
    return rows


def check_same_grid(out: Path, meta: dict[str, Any]) -> None:
    """Refuse to resume a grid in ``out`` that was started with other settings: its finished cells would be mixed
    with cells trained differently."""
    path = Path(out) / RESULTS
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    keys = ("data", "model", "recipes", "tune")
    before = {**{k: saved.get(k) for k in keys}, **(saved.get("options") or {}),
              "task": saved.get("task") or "classification"}  # grids of older versions were classification
    now = {**{k: meta.get(k) for k in keys}, **(meta.get("options") or {}),
           "task": meta.get("task") or "classification"}
    differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if differ:
        changes = "; ".join(f"{k}: {before.get(k)!r} before, {now.get(k)!r} now" for k in differ)
        raise TransferKitError(f"{out} holds a grid started with other settings ({changes}). Fix: rerun with the "
                               "same options to resume it, or pass another --out for a new grid.")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{secs:02d}s"


def _read(out: Path) -> dict[str, Any]:
    path = Path(out) / RESULTS
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_results(out: Path) -> list[CellResult]:
    return [CellResult(**row) for row in _read(out).get("cells", [])]


def grid(strategies: Sequence[str], sizes: Sequence[int], seeds: int, scratch_sizes: Sequence[int] = (),
         equal_budget: bool = False, adapt: Sequence[str] = ("none",)) -> list[Cell]:
    """The cells: every strategy at every size and seed, plus extra sizes for ``scratch`` only; with
    ``equal_budget``, ``scratch`` once more at every one of its sizes for each transfer strategy, with that
    strategy's budget. Each method of ``adapt`` other than ``none`` adds every pre-trained strategy once more,
    trained with that method (``two-stage+dann``)."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise bad_value("strategies", ",".join(unknown), f"a comma-separated subset of {', '.join(STRATEGIES)}")
    from ..options import ADAPT_METHODS

    wrong = [m for m in adapt if m not in ADAPT_METHODS]
    if wrong or not adapt:
        raise bad_value("adapt", ",".join(adapt), f"a comma-separated subset of {', '.join(ADAPT_METHODS)}")
    if not sizes or any(n < 1 for n in sizes):
        raise bad_value("per_class", list(sizes), "comma-separated positive integers, e.g. 10,30,100")
    if seeds < 1:
        raise bad_value("seeds", seeds, "a positive integer")
    labels = [s if m == "none" else f"{s}{ADAPTED}{m}" for s in strategies for m in dict.fromkeys(adapt)
              if m == "none" or s not in NOT_ADAPTED]
    cells = [Cell(s, n, seed) for s in labels for n in sorted(set(sizes)) for seed in range(seeds)]
    extra = sorted(set(scratch_sizes) - set(sizes))
    if extra and SCRATCH not in strategies:
        raise TransferKitError("--scratch-per-class needs 'scratch' among --strategies.")
    cells += [Cell(SCRATCH, n, seed) for n in extra for seed in range(seeds)]
    if equal_budget and SCRATCH in strategies:
        scratch_sizes_all = sorted(set(sizes) | set(extra))
        cells += [Cell(SCRATCH, n, seed, budget) for budget in strategies if budget != SCRATCH
                  for n in scratch_sizes_all for seed in range(seeds)]
    return cells


def _grouped(results: Iterable[CellResult], key: Callable[[CellResult], Any]) -> dict[Any, list[CellResult]]:
    groups: dict[Any, list[CellResult]] = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    return groups


def mean_accuracy(results: Sequence[CellResult], strategy: str, budget: str = "") -> dict[int, float]:
    """Mean test accuracy over seeds, per training-set size (``budget``: see :class:`Cell`)."""
    by_size = _grouped((r for r in results if r.strategy == strategy and r.budget == budget), lambda r: r.per_class)
    return {n: sum(r.test_accuracy for r in runs) / len(runs) for n, runs in sorted(by_size.items())}


class Standing(NamedTuple):
    """One strategy at one size, over its seeds."""

    strategy: str
    accuracy: float  # mean test accuracy
    spread: float  # half the range of test accuracies
    seconds: float  # mean wall time


def ranking(results: Sequence[CellResult], per_class: int) -> list[Standing]:
    """The strategies run at ``per_class`` at their own recipes, best test accuracy first."""
    by_strategy = _grouped((r for r in results if r.per_class == per_class and not r.budget), lambda r: r.strategy)
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


def factor(scratch_curve: dict[int, float], accuracy: float, n: int) -> float:
    """Data-efficiency factor: scratch's examples needed for ``accuracy`` over ``n`` (``inf`` if never reached)."""
    needed = examples_needed(scratch_curve, accuracy)
    return needed / n if needed is not None else math.inf


VIEWS = {"converged": "scratch trained to convergence (its own recipe)",
         "equal_budget": "scratch given the strategy's budget (the same passes over the training images)"}


def derived_factors(results: Sequence[CellResult], plan: Resampling | None = None) -> list[dict[str, Any]]:
    """Per transfer strategy and size: both data-efficiency factors (``converged`` and ``equal_budget``, each with
    the scratch size needed, the factor and its text) and the speed-up over ``scratch``; with a resampling
    ``plan`` (and per-sample test results in every cell) each factor and accuracy gets a bootstrap interval."""
    converged = mean_accuracy(results, SCRATCH)
    if not converged:
        return []
    scratch_runs = [r for r in results if r.strategy == SCRATCH and not r.budget]
    matrices = correctness(results) if plan is not None else {}
    rows = []
    for strategy in sorted({r.strategy for r in results} - {SCRATCH}):
        for n, accuracy in mean_accuracy(results, strategy).items():
            row: dict[str, Any] = {"strategy": strategy, "per_class": n, "test_accuracy": accuracy}
            if (strategy, "", n) in matrices:
                row["test_accuracy_interval"] = interval(replicate_accuracies(matrices[(strategy, "", n)], plan))
            for view, budget in (("converged", ""), ("equal_budget", strategy)):
                curve = mean_accuracy(results, SCRATCH, budget)
                if not curve:
                    row[view] = None
                    continue
                row[view] = _factor_entry(curve, accuracy, n)
                bounds = _factor_interval(matrices, strategy, budget, n, sorted(curve), plan)
                if bounds is not None:
                    row[view]["interval"] = list(bounds)
                    row[view]["text"] += f" [{_factor_text(bounds[0])}, {_factor_text(bounds[1])}]"
            row.update(_speedup(results, strategy, n, scratch_runs))
            rows.append(row)
    return rows


def _factor_interval(matrices: dict[tuple[str, str, int], np.ndarray], strategy: str, budget: str, n: int,
                     sizes: list[int], plan: Resampling | None) -> tuple[float, float] | None:
    """The bootstrap interval of one factor: the strategy's accuracy at ``n`` against the scratch curve (cells with
    ``budget``), both resampled together."""
    keys = [(SCRATCH, budget, m) for m in sizes] + [(strategy, "", n)]
    if plan is None or not all(k in matrices for k in keys):
        return None

    def statistic(acc: dict) -> float:
        return factor({m: acc[(SCRATCH, budget, m)] for m in sizes}, acc[(strategy, "", n)], n)

    return interval(replicate_statistic({k: matrices[k] for k in keys}, statistic, plan))


def _factor_entry(curve: dict[int, float], accuracy: float, n: int) -> dict[str, Any]:
    needed = examples_needed(curve, accuracy)
    largest = max(curve)
    if needed is None:
        text = f"> {largest / n:.1f}x (scratch never gets there by its largest size, {largest})"
    else:
        text = f"{needed / n:.1f}x"
    return {"scratch_per_class_needed": needed, "factor": needed / n if needed is not None else None,
            "scratch_largest": largest, "text": text}


def _factor_text(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.1f}x"


def correctness(results: Sequence[CellResult]) -> dict[tuple[str, str, int], np.ndarray]:
    """Per group (strategy, budget, size) the 0/1 matrix (seeds, test samples), seeds in order; groups whose cells
    lack per-sample results (an older results.json) are left out."""
    groups = _grouped(results, lambda r: r.cell.group)
    matrices = {}
    for key, runs in groups.items():
        if all(r.test_correct for r in runs) and len({len(r.test_correct) for r in runs}) == 1:
            matrices[key] = np.stack([unbits(r.test_correct) for r in sorted(runs, key=lambda r: r.seed)])
    return matrices


def accuracy_intervals(results: Sequence[CellResult], plan: Resampling) -> dict[tuple[str, str, int], list[float]]:
    """The bootstrap interval of every group's mean test accuracy."""
    return {key: list(interval(replicate_accuracies(m, plan))) for key, m in correctness(results).items()}


def comparisons(results: Sequence[CellResult], plan: Resampling) -> list[dict[str, Any]]:
    """At every size, each pair of strategies at their own recipes: the difference of mean test accuracy with its
    interval, and whether the two are distinguishable (the interval excludes 0)."""
    matrices = {k: v for k, v in correctness(results).items() if not k[1]}
    rows = []
    for n in sorted({k[2] for k in matrices}):
        at_n = sorted((k for k in matrices if k[2] == n), key=lambda k: -matrices[k].mean())
        replicates = {k: replicate_accuracies(matrices[k], plan) for k in at_n}
        for i, a in enumerate(at_n):
            for b in at_n[i + 1:]:
                diff = interval(replicates[a] - replicates[b])
                rows.append({"per_class": n, "better": a[0], "worse": b[0],
                             "difference": float(matrices[a].mean() - matrices[b].mean()),
                             "interval": list(diff), "distinguishable": distinguishable(diff)})
    return rows


def _speedup(results: Sequence[CellResult], strategy: str, n: int, scratch_runs: Sequence[CellResult]) -> dict:
    """Scratch's time to its best validation accuracy vs this strategy's time to the same accuracy (same size,
    averaged over seeds)."""
    pairs = []
    for run in (r for r in results if r.strategy == strategy and r.per_class == n and not r.budget):
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
    speedup = scratch_s / max(strategy_s, 1e-9)
    note = "" if len(reached) == len(pairs) else f" ({len(pairs) - len(reached)} seed(s) never reach it)"
    return {"speedup": speedup, "speedup_text": f"{speedup:.1f}x{note}"}
