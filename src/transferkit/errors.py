"""One error type for bad user input, with one message format.

Every message names the problem, what was received, what is allowed and the fix, so the CLI can
print it as one line (no traceback) and exit with code 2.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class TransferKitError(Exception):
    """Bad user input or an unusable environment, described so the user can fix it."""

    exit_code = 2


class IncompleteRunError(TransferKitError):
    """A run folder that holds a checkpoint but no finished model."""


def one_line(error: BaseException) -> str:
    """The error's message on one line. An error raised in a DataLoader worker comes back with the worker's traceback
    in its message ("Caught TransferKitError in DataLoader worker process 0. Original Traceback ..."): only the
    original message is kept."""
    text = str(error)
    if "Original Traceback" in text:
        marker = f"{type(error).__name__}: "
        last = text.rstrip().splitlines()[-1]
        text = last.split(marker, 1)[1] if marker in last else last
    return re.sub(r"\s*[\r\n]+\s*", " ", text).strip()


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


# --- value checks: one implementation for the option schema and the library functions ----------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_int(name: str, value: object, minimum: int = 1, allowed: str | None = None, example: object = None) -> int:
    """``value`` as an int of at least ``minimum``; otherwise the house-style error."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        words = allowed or {1: "a positive integer", 0: "a non-negative integer"}.get(
            minimum, f"an integer of at least {minimum}")
        example = example if example is not None else max(minimum, 8)
        raise bad_value(name, value, words, f"Pass e.g. {_flag(name)} {example}.")
    return value


def check_range(name: str, value: object, low: float, high: float, *, low_open: bool = False,
                high_open: bool = True, allowed: str | None = None, example: object = None) -> float:
    """``value`` as a float within ``low``..``high`` (each end open or closed); otherwise the house-style error."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        words = allowed or (f"a float in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")
        fix = f"Pass e.g. {_flag(name)} {example}." if example is not None else ""
        raise bad_value(name, value, words, fix)
    return float(value)


def check_choice(name: str, value: object, choices: Iterable[str], fix: str | None = None) -> str:
    """``value`` as one of ``choices``; otherwise the house-style error (``fix`` defaults to the first choice)."""
    choices = list(choices)
    if value not in choices:
        words = (f"'{choices[0]}' or '{choices[1]}'" if len(choices) == 2 else f"one of {', '.join(choices)}")
        raise bad_value(name, value, words, fix if fix is not None else f"Pass e.g. {_flag(name)} {choices[0]}.")
    return value  # type: ignore[return-value]


# Exception classes (by name, so no HTTP library needs importing) that mean the network or hub is unreachable,
# and those that mean the hub answered that the weights do not exist (or are not accessible).
OFFLINE_ERRORS = {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout",
                  "ConnectionError", "gaierror", "TimeoutError", "TimeoutException", "ReadTimeout", "Timeout"}
NOT_FOUND_ERRORS = {"RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError",
                    "RemoteEntryNotFoundError", "GatedRepoError"}


def failure_kind(exc: BaseException) -> str:
    """``offline``, ``not found`` or ``failed``: what an exception (and its causes) says about a download."""
    chain = _chain(exc)
    names = {cls.__name__ for error in chain for cls in type(error).__mro__}
    status = [_http_status(error) for error in chain]
    if names & OFFLINE_ERRORS or any(type(e).__name__ == "URLError" for e in chain):
        return "offline"
    if names & NOT_FOUND_ERRORS or any(code in (401, 403, 404) for code in status):
        return "not found"
    return "failed"


def failure_cause(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` of the deepest cause (what actually went wrong)."""
    root = _chain(exc)[-1]
    lines = str(root).strip().splitlines()
    return f"{type(root).__name__}: {(lines[0] if lines else '(no message)')[:limit]}"


def weights_error(what: str, exc: BaseException, fix: str) -> TransferKitError:
    """The one-line error for pre-trained weights that could not be had, with the real cause.

    Args:
        what: the model, e.g. ``timm:resnet50.a1_in1k``.
        exc: what the library raised.
        fix: what else the user can do (after the kind-specific advice).
    """
    kind, cause = failure_kind(exc), failure_cause(exc)
    if kind == "offline":
        return TransferKitError(f"Could not download pre-trained weights for {what}: offline ({cause}). Fix: connect "
                                f"to the internet, or {fix}")
    if kind == "not found":
        return TransferKitError(f"Pre-trained weights for {what} not found ({cause}). Fix: {fix}")
    return TransferKitError(f"Loading pre-trained weights for {what} failed ({cause}). Fix: if a downloaded file is "
                            f"damaged, delete it from the cache (~/.cache/huggingface, ~/.cache/torch) and retry; or "
                            f"{fix}")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (``raise ... from``, or the exception being handled), outermost first."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        reason = getattr(exc, "reason", None)  # urllib's URLError wraps the socket error in .reason
        exc = exc.__cause__ or exc.__context__ or (reason if isinstance(reason, BaseException) else None)
    return chain


def _http_status(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None
