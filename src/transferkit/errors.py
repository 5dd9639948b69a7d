"""One error type for bad user input, with one message format.

Every message names the problem, what was received, what is allowed and the fix, so the CLI can
print it as one line (no traceback) and exit with code 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TransferKitError(Exception):
    """Bad user input or an unusable environment, described so the user can fix it."""

    exit_code = 2


class IncompleteRunError(TransferKitError):
    """A run folder that holds a checkpoint but no finished model."""


def bad_value(name: str, got: object, allowed: str, fix: str = "") -> TransferKitError:
    """Build the house-style error: ``The 'x' parameter must be ... Got ... instead. Fix ...``."""
    message = f"The '{name}' parameter must be {allowed}. Got {got!r} instead."
    if fix:
        message += f" {fix}"
    return TransferKitError(message)


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates closest to ``word`` (for "did you mean" hints), best first."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    if not matches:
        matches = [c for c in candidates if word.lower() in c.lower()][:n]
    return matches


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ``Did you mean: a, b?`` sentence, or an empty string when nothing is close."""
    matches = close_matches(word, candidates)
    return f"Did you mean: {', '.join(matches)}?" if matches else ""
