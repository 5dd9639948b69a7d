"""The self-describing run folder: its files, every write and every read, in one object.

```
runs/pets/
  config.yaml          the resolved configuration, a recipe (written first; what --resume reads)
  checkpoint/          resumable state after the last completed epoch (weights, optimizer, best, state)
  metrics.jsonl        one JSON line per epoch
  model.safetensors    the final (best-epoch) weights           } written last, in this order, so a
  transferkit.json     model source, labels, preprocessing...   } folder without it is never "finished"
```

Every write is atomic (a temporary file renamed into place) and happens in the main process only, so several
processes of one distributed run (``torchrun``, ``accelerate launch``) write each file once. Runs made before
``config.yaml`` existed have a ``config.json``; both are read.
"""

from __future__ import annotations

import functools
import json
import logging
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from .distributed import is_main_process
from .errors import IncompleteRunError, TransferKitError
from .training.checkpoint import (
    CHECKPOINT,
    Checkpoint,
    has_checkpoint,
    load_checkpoint,
    load_checkpoint_state,
    save_checkpoint,
    save_weights,
    write_json_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:
    from .data.samples import SplitData
    from .models.model import TransferModel
    from .options import TrainConfig
    from .plan import Plan
    from .training.loop import FitResult

INFO = "transferkit.json"
CONFIG = "config.yaml"
LEGACY_CONFIG = "config.json"
WEIGHTS = "model.safetensors"
HEAD_WEIGHTS = "head.safetensors"
METRICS = "metrics.jsonl"
FEATURE_CACHE = "feature-cache"  # the default --cache-dir, inside the run folder
PROBE_HEAD = "probe_head.safetensors"  # the head at the end of the head-only stage (WiSE-FT's start point)
INTERPOLATION = "interpolation.json"  # a WiSE-FT sweep: accuracy and retention over alpha
FORMAT_VERSION = 1

logger = logging.getLogger(__name__)
Write = TypeVar("Write", bound=Callable[..., Any])


def _reports_write_errors(method: Write) -> Write:
    """A failed write (a full disk, a read-only folder) becomes one clear error that names the folder, says what
    is still there and how to go on, instead of an ``OSError`` traceback."""

    @functools.wraps(method)
    def wrapper(self: RunFolder, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            raise self.write_error(exc) from exc

    return wrapper  # type: ignore[return-value]


class RunFolder:
    """One run folder. Reads work in every process; writes happen only in the main process.

    Args:
        path: the folder.
        main_process: whether this process writes (default: rank 0 of a distributed job, or the only process).
    """

    def __init__(self, path: str | Path, *, main_process: bool | None = None) -> None:
        self.path = Path(path)
        self.main_process = is_main_process() if main_process is None else main_process

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # --- what is there ---------------------------------------------------------------------------

    @property
    def is_finished(self) -> bool:
        return (self.path / INFO).is_file()

    @property
    def has_checkpoint(self) -> bool:
        return has_checkpoint(self.path)

    @property
    def is_unstarted(self) -> bool:
        """A run that stopped (was killed) before its first checkpoint: its configuration, maybe metrics of an
        unfinished first epoch and feature-cache entries, nothing to resume. Running the same command again
        starts it over in place (keeping the cache entries, which are keyed by their contents)."""
        if not (self.path / CONFIG).is_file() or self.is_finished or self.has_checkpoint:
            return False
        return all(p.name in (CONFIG, METRICS, FEATURE_CACHE) or p.name.startswith(".") for p in self.path.iterdir())

    # --- reads -----------------------------------------------------------------------------------

    def read_config(self) -> dict[str, Any]:
        """The saved configuration (``config.yaml``, or ``config.json`` of older runs) as options."""
        from .options import load_recipe

        if (self.path / CONFIG).is_file():
            return load_recipe(self.path / CONFIG)
        if (self.path / LEGACY_CONFIG).is_file():
            return json.loads((self.path / LEGACY_CONFIG).read_text(encoding="utf-8"))
        raise TransferKitError(f"{self.path} is not a transferkit run folder (no {CONFIG}). Fix: pass the --out "
                               "folder of a run.")

    def read_info(self) -> dict[str, Any]:
        """The finished run's ``transferkit.json``; a clear error for anything else."""
        if not self.path.is_dir():
            raise TransferKitError(f"Run folder not found: {self.path}. Fix: pass the --out folder of a training "
                                   "run.")
        if not self.is_finished:
            if self.has_checkpoint:
                raise IncompleteRunError(f"{self.path} holds an interrupted run, not a finished model. Fix: continue "
                                         f"it with `transferkit train --resume {self.path}`.")
            raise TransferKitError(f"{self.path} holds no finished run ({INFO} missing). Fix: pass the --out folder "
                                   "of a completed training run.")
        info = json.loads((self.path / INFO).read_text(encoding="utf-8"))
        if info.get("format") != FORMAT_VERSION:
            raise TransferKitError(f"{self.path / INFO} has format {info.get('format')!r}; this transferkit reads "
                                   f"format {FORMAT_VERSION}. Fix: upgrade transferkit.")
        return info

    def checkpoint_state(self) -> dict[str, Any]:
        """Where the last checkpoint stands (``epoch``, ``phase_index``, ``history``...), without the tensors."""
        return load_checkpoint_state(self.path)["train"]

    def load_checkpoint(self) -> Checkpoint:
        return load_checkpoint(self.path)

    # --- writes (main process only) ---------------------------------------------------------------

    def check_new(self, overwrite: bool) -> None:
        """Refuse to clobber a finished or interrupted run unless ``overwrite`` (checked before any training)."""
        if not self.path.exists() or not any(self.path.iterdir()) or overwrite:
            return
        if self.is_unstarted:
            logger.info("%s holds a run that stopped before its first checkpoint: starting it over", self.path)
            return
        if self.is_finished:
            raise TransferKitError(f"{self.path} already holds a finished run. Fix: choose another --out, or pass "
                                   "--overwrite to replace it.")
        if self.has_checkpoint:
            raise TransferKitError(f"{self.path} holds an interrupted run. Fix: continue it with --resume "
                                   f"{self.path}, or pass --overwrite to start again.")
        raise TransferKitError(f"{self.path} exists and is not empty. Fix: choose another --out, or pass "
                               "--overwrite.")

    @_reports_write_errors
    def create(self, config: TrainConfig, overwrite: bool) -> None:
        """Make the folder and write the configuration first (what ``--resume`` reads); an unstarted run's folder
        (see :attr:`is_unstarted`) is reused."""
        if not self.main_process:
            return
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        elif self.path.is_dir() and self.is_unstarted:
            (self.path / METRICS).unlink(missing_ok=True)
            shutil.rmtree(self.path / f".{CHECKPOINT}.new", ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        header = (f"transferkit recipe: the resolved configuration of {self.path}.\n"
                  f"Reproduce it: transferkit train --config {self.path / CONFIG} --out NEW_FOLDER")
        write_text_atomic(self.path / CONFIG, config.to_recipe(header))

    def discard_if_unstarted(self) -> None:
        """Remove a new folder that never reached its first checkpoint (a failed start leaves nothing behind)."""
        if self.main_process and not self.has_checkpoint:
            shutil.rmtree(self.path, ignore_errors=True)

    @_reports_write_errors
    def save_checkpoint(self, *, state: dict[str, Any], model: dict[str, torch.Tensor],
                        best: dict[str, torch.Tensor] | None, optimizer: dict[str, Any] | None,
                        ema: dict[str, torch.Tensor] | None = None) -> None:
        if self.main_process:
            save_checkpoint(self.path, state=state, model=model, best=best, optimizer=optimizer, ema=ema)

    @_reports_write_errors
    def rewrite_metrics(self, history: list[dict[str, Any]]) -> None:
        """``metrics.jsonl`` from the history (at the start of a resumed run)."""
        if self.main_process:
            write_text_atomic(self.path / METRICS, "".join(json.dumps(record) + "\n" for record in history))

    @_reports_write_errors
    def append_metrics(self, record: dict[str, Any]) -> None:
        if self.main_process:
            with open(self.path / METRICS, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def probe_head(self) -> dict[str, torch.Tensor] | None:
        """The linear-probe head saved at the end of the head-only stage (``None`` when the run has none)."""
        from .training.checkpoint import load_weights

        path = self.path / PROBE_HEAD
        return load_weights(path) if path.is_file() else None

    def save_probe_head(self, head: dict[str, torch.Tensor]) -> None:
        if self.main_process:
            save_weights(self.path / PROBE_HEAD, head)

    def save_json(self, name: str, data: Any) -> None:
        """A report file beside the run's own (e.g. ``interpolation.json``)."""
        if self.main_process:
            write_json_atomic(self.path / name, data)

    @_reports_write_errors
    def save_model(self, model: TransferModel) -> None:
        """The trained model: full weights, or a LoRA run's head (its adapter goes to ``adapter/``); text models
        also save their tokenizer and encoder config."""
        if not self.main_process:
            return
        if model.is_text:
            model.save_parts(self.path)
        if getattr(model, "has_lora", False):
            save_weights(self.path / HEAD_WEIGHTS, model.head.state_dict())
        else:
            save_weights(self.path / WEIGHTS, model.state_dict())

    @_reports_write_errors
    def finish(self, *, model: TransferModel, data: SplitData, config: TrainConfig, plan: Plan, result: FitResult,
               test: dict[str, Any] | None, timings: dict[str, float],
               distributed: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write ``transferkit.json`` last and atomically: from now on the folder is a finished run. Returns it.

        This is the one place that knows what ``transferkit.json`` holds. ``distributed`` describes the processes
        (the global and per-process batch, what each built, each one's final-weights fingerprint); ``extra`` adds
        sections (``wise_ft``, ``adaptation``).
        """
        info = {
            "format": FORMAT_VERSION,
            "status": "complete", "task": model.task, "modality": model.modality, "model": asdict(model.spec),
            "head": model.head_config.to_dict(), "preprocessing": model.preprocessing.to_dict(),
            "classes": data.classes, "strategy": config.strategy, "bn_policy": plan.bn,
            "phases": [p.to_dict() for p in plan.phases],
            "layer_groups": [{"name": name, "params": count} for name, count in plan.groups],
            "data": {"description": data.description, "train": len(data.train), "val": len(data.val),
                     "skipped_images": len(data.skipped), "class_counts": data.train.class_counts()},
            "config": asdict(config),
            "distributed": distributed or plan.distribution,
            "metrics": {"best_epoch": result.best_epoch, f"val_{result.monitor}": result.best_val_score,
                        "epochs_run": len(result.history), **{k: round(v, 2) for k, v in timings.items()},
                        "test": test},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": versions(),
            **(extra or {}),
        }
        if self.main_process:
            write_json_atomic(self.path / INFO, info)
        return info

    def write_error(self, exc: OSError) -> TransferKitError:
        """The one-line error for a failed write to this folder, with what remains and the fix."""
        reason = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        if self.has_checkpoint:
            epoch = self.checkpoint_state()["epoch"]
            state, then = (f"Its last checkpoint (epoch {epoch}) is intact", "continue with `transferkit train "
                           f"--resume {self.path}`")
        else:
            state, then = "No checkpoint was saved yet", "run the same command again"
        return TransferKitError(f"Could not write to the run folder {self.path}: {reason}{where}. {state}. Fix: free "
                                f"disk space (a full disk is the usual cause) or make the folder writable, then "
                                f"{then}.")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("transferkit", "torch", "torchvision", "timm", "accelerate", "transformers", "tokenizers", "peft",
                 "pillow"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:  # running from a source tree that was not installed, or not installed
            found[name] = "unknown" if name == "transferkit" else "absent"
    return found
