"""Uncertainty for ``compare``: a paired bootstrap over seeds and test samples.

Every cell of a grid is scored on the same test samples, and cell seed ``s`` of every strategy trains on the same
subset of the data, so one resampling plan (which seeds, how often each test sample counts) is drawn once and
applied to every group of cells: differences between strategies and factors derived from several groups are then
resampled together, as they were measured. An accuracy's interval is the 2.5th-97.5th percentile of its
replicates; two strategies are *not distinguishable* when the interval of their difference contains 0.
Pure numpy; no training here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
REPLICATES = 2000


@dataclass(frozen=True)
class Resampling:
    """One bootstrap plan shared by every group of cells.

    Attributes:
        seed_draws: uniform draws in [0, 1), shape (replicates, max seeds): replicate r takes, as its j-th seed,
            seed number ``floor(seed_draws[r, j] * k)`` of a group that has k seeds (the same seeds for every
            group with k seeds: paired).
        test_weights: how many times each test sample counts in replicate r, shape (replicates, test samples);
            each row sums to the number of test samples (a multinomial draw: sampling with replacement).
    """

    seed_draws: np.ndarray
    test_weights: np.ndarray

    @property
    def replicates(self) -> int:
        return len(self.test_weights)


def resampling(n_test: int, max_seeds: int, replicates: int = REPLICATES, seed: int = 0) -> Resampling:
    """A plan over ``n_test`` test samples and up to ``max_seeds`` seeds (seeded: reruns give the same intervals)."""
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_test, np.full(n_test, 1.0 / n_test), size=replicates).astype(np.float32)
    return Resampling(rng.random((replicates, max(1, max_seeds))), weights)


def replicate_accuracies(correct: np.ndarray, plan: Resampling) -> np.ndarray:
    """The mean accuracy over seeds of one group in every replicate.

    Args:
        correct: 0/1 per seed and test sample, shape (seeds, test samples) — the group's runs.
        plan: the shared resampling plan.

    Returns:
        shape (replicates,).
    """
    correct = np.atleast_2d(np.asarray(correct, dtype=np.float32))
    k, n = correct.shape
    per_seed = plan.test_weights @ correct.T / n  # (replicates, seeds): each seed's accuracy on resampled tests
    chosen = np.floor(plan.seed_draws[:, :k] * k).astype(int)  # (replicates, k) seeds drawn with replacement
    return np.take_along_axis(per_seed, chosen, axis=1).mean(axis=1)


def interval(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates. Infinite replicates (a factor that is
    not reached) are kept: an upper end of ``inf`` means "not reached in more than (1 - level) / 2 of them"."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2
    # the "inverted CDF" percentile: an actual replicate, never an interpolation (inf - inf would be nan)
    low = values[max(0, int(np.ceil(tail * values.size)) - 1)]
    high = values[min(values.size - 1, int(np.ceil((1 - tail) * values.size)) - 1)]
    return float(low), float(high)


def distinguishable(difference: tuple[float, float]) -> bool:
    """Whether an interval of a difference excludes 0."""
    low, high = difference
    return low > 0 or high < 0


def replicate_statistic(groups: dict[object, np.ndarray], statistic: Callable[[dict[object, float]], float],
                        plan: Resampling) -> np.ndarray:
    """``statistic`` (of each group's mean accuracy, e.g. a data-efficiency factor) in every replicate.

    Args:
        groups: per key, the group's 0/1 matrix (seeds, test samples).
        statistic: maps {key: accuracy} to a number (``inf`` allowed).
    """
    accuracies = {key: replicate_accuracies(correct, plan) for key, correct in groups.items()}
    return np.array([statistic({key: float(acc[r]) for key, acc in accuracies.items()})
                     for r in range(plan.replicates)])


def bits(correct: Sequence[bool] | np.ndarray) -> str:
    """Per-sample correctness as a compact string for ``results.json`` ("1" right, "0" wrong)."""
    return "".join("1" if c else "0" for c in np.asarray(correct, dtype=bool))


def unbits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8) == ord("1")
