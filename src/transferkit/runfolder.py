"""The self-describing run folder.

```
runs/pets/
  config.json          the resolved training configuration (written first; what --resume reads)
  checkpoint/          resumable state after the last completed epoch (weights, optimizer, best, state)
  metrics.jsonl        one JSON line per epoch
  model.safetensors    the final (best-epoch) weights           } written last, in this order, so a
  transferkit.json     model source, labels, preprocessing...   } folder without it is never "finished"
```
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path
from typing import Any

from .errors import IncompleteRunError, TransferKitError
from .training.checkpoint import CHECKPOINT, write_json_atomic

INFO = "transferkit.json"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
FORMAT_VERSION = 1


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / INFO).is_file()


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINT / "state.json").is_file()


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to clobber a finished or interrupted run unless ``overwrite`` (checked before any training)."""
    run_dir = Path(run_dir)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    if overwrite:
        return
    if is_finished(run_dir):
        raise TransferKitError(f"{run_dir} already holds a finished run. Fix: choose another --out, or pass "
                               "--overwrite to replace it.")
    if has_checkpoint(run_dir):
        raise TransferKitError(f"{run_dir} holds an interrupted run. Fix: continue it with --resume {run_dir}, "
                               "or pass --overwrite to start again.")
    raise TransferKitError(f"{run_dir} exists and is not empty. Fix: choose another --out, or pass --overwrite.")


def create_run_dir(run_dir: Path, config: dict[str, Any], overwrite: bool) -> None:
    run_dir = Path(run_dir)
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / CONFIG, config)


def read_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise TransferKitError(f"{run_dir} is not a transferkit run folder (no {CONFIG}). Fix: pass the --out "
                               "folder of a run.")
    return json.loads(path.read_text(encoding="utf-8"))


def read_info(run_dir: Path) -> dict[str, Any]:
    """The finished run's ``transferkit.json``; a clear error for anything else."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TransferKitError(f"Run folder not found: {run_dir}. Fix: pass the --out folder of a training run.")
    if not is_finished(run_dir):
        if has_checkpoint(run_dir):
            raise IncompleteRunError(f"{run_dir} holds an interrupted run, not a finished model. Fix: continue it "
                                     f"with `transferkit train --resume {run_dir}`.")
        raise TransferKitError(f"{run_dir} holds no finished run ({INFO} missing). Fix: pass the --out folder of "
                               "a completed training run.")
    info = json.loads((run_dir / INFO).read_text(encoding="utf-8"))
    if info.get("format") != FORMAT_VERSION:
        raise TransferKitError(f"{run_dir / INFO} has format {info.get('format')!r}; this transferkit reads "
                               f"format {FORMAT_VERSION}. Fix: upgrade transferkit.")
    return info


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` from the history (used at the start of a resumed run)."""
    lines = "".join(json.dumps(record) + "\n" for record in history)
    tmp = Path(run_dir) / f".{METRICS}.tmp"
    tmp.write_text(lines, encoding="utf-8")
    tmp.replace(Path(run_dir) / METRICS)


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import accelerate
    import timm
    import torch
    import torchvision

    try:
        own = version("transferkit")
    except PackageNotFoundError:  # running from a source tree that was not installed
        own = "unknown"
    return {"transferkit": own, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "timm": timm.__version__, "accelerate": accelerate.__version__, "python": platform.python_version()}


def finish_run(run_dir: Path, info: dict[str, Any]) -> None:
    """Write ``transferkit.json`` last and atomically: from now on the folder is a finished run."""
    write_json_atomic(Path(run_dir) / INFO, {"format": FORMAT_VERSION, **info, "versions": versions()})
