"""Crash-safe files: atomic JSON and safetensors writes, and the resumable checkpoint folder.

The checkpoint is written as a whole new folder and swapped in with renames, so a crash at any moment
leaves either the previous complete checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import TransferKitError

CHECKPOINT = "checkpoint"


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                         encoding="utf-8")
    try:
        with handle:
            handle.write(text)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)  # a failed write (full disk) leaves no temporary file
        raise


def save_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save a state dict as safetensors, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}


@dataclass
class Checkpoint:
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any] | None
    ema: dict[str, torch.Tensor] | None = None  # the weight average (``--ema``), when the run keeps one


def save_checkpoint(run_dir: Path, *, state: dict[str, Any], model: dict[str, torch.Tensor],
                    best: dict[str, torch.Tensor] | None, optimizer: dict[str, Any] | None,
                    ema: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``run_dir/checkpoint`` (state.json, model, best, optimizer, ema) as one atomic swap.

    Args:
        best: the best weights; ``None`` keeps the previous checkpoint's best file.
        optimizer: optimizer and scheduler state of the running phase (``None`` at a phase boundary).
        ema: the moving average of the weights (``--ema``; ``None``: the run keeps none).

    A write that fails (a full disk) removes the half-written new folder and raises the ``OSError``; the
    previous checkpoint stays as it was. A swap interrupted between its two renames (a crash) is completed first:
    the previous checkpoint, then only in ``.checkpoint.old``, is moved back before anything is deleted.
    """
    run_dir = Path(run_dir)
    final, new, old = run_dir / CHECKPOINT, run_dir / f".{CHECKPOINT}.new", run_dir / f".{CHECKPOINT}.old"
    if not (final / "state.json").is_file() and (old / "state.json").is_file():
        os.replace(old, final)  # a crash between the renames left the only complete checkpoint in .old
    shutil.rmtree(new, ignore_errors=True)
    try:
        new.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.items()}, str(new / "model.safetensors"))
        if best is not None:
            save_file({k: v.contiguous() for k, v in best.items()}, str(new / "best.safetensors"))
        elif (final / "best.safetensors").exists():
            shutil.copy2(final / "best.safetensors", new / "best.safetensors")
        if optimizer is not None:
            torch.save(optimizer, new / "optimizer.pt")
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.items()}, str(new / "ema.safetensors"))
        with open(new / "state.json", "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2, default=str)
    except OSError:
        shutil.rmtree(new, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a complete checkpoint (in ``checkpoint/``, or in ``.checkpoint.old`` when a crash
    interrupted the swap between its two renames)."""
    run_dir = Path(run_dir)
    return any((run_dir / name / "state.json").is_file() for name in (CHECKPOINT, f".{CHECKPOINT}.old"))


def _checkpoint_folder(run_dir: Path) -> Path:
    """The latest complete checkpoint folder (the previous one if a swap was interrupted)."""
    run_dir = Path(run_dir)
    folder = run_dir / CHECKPOINT
    if not (folder / "state.json").exists() and (run_dir / f".{CHECKPOINT}.old" / "state.json").exists():
        folder = run_dir / f".{CHECKPOINT}.old"
    if not (folder / "state.json").exists():
        raise TransferKitError(f"No checkpoint in {run_dir}: nothing to resume. Fix: pass the --out folder of "
                               "a run that was interrupted after at least one epoch.")
    return folder


def load_checkpoint_state(run_dir: Path) -> dict[str, Any]:
    """Only ``state.json`` of the latest checkpoint (where training stands), without the tensors."""
    with open(_checkpoint_folder(run_dir) / "state.json", encoding="utf-8") as handle:
        return json.load(handle)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read the latest complete checkpoint (falls back to the previous one if a swap was interrupted)."""
    folder = _checkpoint_folder(run_dir)
    with open(folder / "state.json", encoding="utf-8") as handle:
        state = json.load(handle)
    best = load_file(str(folder / "best.safetensors")) if (folder / "best.safetensors").exists() else None
    optimizer = (torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
                 if (folder / "optimizer.pt").exists() else None)
    ema = load_file(str(folder / "ema.safetensors")) if (folder / "ema.safetensors").exists() else None
    return Checkpoint(state, load_file(str(folder / "model.safetensors")), best, optimizer, ema)
