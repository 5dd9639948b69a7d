"""The bootstrap intervals of compare on known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from transferkit.experiments.intervals import (
    bits,
    distinguishable,
    interval,
    replicate_accuracies,
    resampling,
    unbits,
)


def test_one_seed_matches_the_binomial_standard_error():
    rng = np.random.default_rng(0)
    correct = rng.random((1, 2000)) < 0.8
    low, high = interval(replicate_accuracies(correct, resampling(2000, 1, replicates=2000)))
    p = correct.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / 2000)  # the normal approximation: +-0.0175
    assert low < p < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)


def test_coverage_of_the_true_accuracy_is_about_95_percent():
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        correct = rng.random((1, 300)) < 0.7
        low, high = interval(replicate_accuracies(correct, resampling(300, 1, replicates=500, seed=trial)))
        hits += low <= 0.7 <= high
    assert 0.90 <= hits / 200 <= 0.99


def test_seed_variation_widens_the_interval():
    """Three seeds that agree on every sample: only test sampling counts. Three seeds at 0.6, 0.7, 0.8 on the
    same samples: resampling the seeds adds their spread (the mean is 0.7 either way)."""
    n = 1000
    order = np.arange(n)
    same = np.stack([order < 700] * 3)
    spread = np.stack([order < 600, order < 700, order < 800])
    plan = resampling(n, 3, replicates=2000)
    same_low, same_high = interval(replicate_accuracies(same, plan))
    low, high = interval(replicate_accuracies(spread, plan))
    assert same.mean() == pytest.approx(0.7) and spread.mean() == pytest.approx(0.7)
    assert high - low > 2 * (same_high - same_low)
    # resampling 3 seeds can give the mean of {0.6, 0.6, 0.6}: the interval reaches towards it
    assert low < 0.66 and high > 0.74


def test_paired_differences_tell_apart_what_unpaired_ones_cannot():
    """Strategy b is right on every sample a gets right, plus 2% more: paired, the difference is never below 0."""
    n = 1000
    rng = np.random.default_rng(2)
    a = rng.random(n) < 0.7
    b = a | (rng.random(n) < 0.066)  # about 2 points better, on the same samples
    plan = resampling(n, 1, replicates=1000)
    diff = interval(replicate_accuracies(b[None], plan) - replicate_accuracies(a[None], plan))
    assert distinguishable(diff) and diff[0] > 0
    same = interval(replicate_accuracies(a[None], plan) - replicate_accuracies(a[None], plan))
    assert same == (0.0, 0.0) and not distinguishable(same)
    assert not distinguishable((-0.01, 0.02)) and distinguishable((-0.03, -0.01))


def test_interval_keeps_infinite_replicates():
    values = [1.0] * 90 + [math.inf] * 10  # a factor scratch does not reach in 10% of the replicates
    assert interval(values) == (1.0, math.inf)
    assert interval([2.0, 3.0, 4.0] * 100) == (2.0, 4.0)
    assert all(math.isnan(v) for v in interval([]))


def test_bits_round_trip():
    correct = np.array([True, False, True, True])
    assert bits(correct) == "1011" and (unbits("1011") == correct).all()
