"""``transferkit compare``: strategies x training-set sizes x seeds on one held-out test split.

Each cell is an ordinary :func:`transferkit.train` run (shared feature / decoded caches); the grid's bookkeeping
and the derived factors are in :mod:`.grid`, the files in :mod:`.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..distributed import is_main_process
from ..errors import TransferKitError
from ..training.checkpoint import write_json_atomic
from .grid import RESULTS, Cell, CellResult, derived_factors, grid, run_grid
from .report import summary_markdown, write_report


def compare(data: str, *, model: str = "efficientnet_lite0", strategies: Sequence[str] = ("scratch", "linear-probe",
            "two-stage"), per_class: Sequence[int] = (10, 30, 100), seeds: int = 1,
            scratch_per_class: Sequence[int] = (), out: str | Path = "reports/compare", progress: bool = False,
            **train_options: Any) -> dict[str, Any]:
    """Run the grid with :func:`transferkit.train` and write ``results.json``, ``summary.md`` and
    ``report.html`` to ``out``. Every run is tested on the data's own held-out test split (the same images
    for every cell); feature and decoded-input caches are shared between runs. Under ``torchrun`` every process
    runs the grid (each cell is a distributed run) and rank 0 writes the files."""
    from ..api import train

    out = Path(out)
    cells = grid(strategies, per_class, seeds, scratch_per_class)
    _require_test_split(data, model, train_options)

    def trainer(cell: Cell, run_dir: Path) -> CellResult:
        result = train(data, model=model, strategy=cell.strategy, per_class=cell.per_class, seed=cell.seed,
                       out=str(run_dir), overwrite=True, cache_dir=str(out / "cache"), progress=progress,
                       **train_options)
        # Seconds from the start of the run, setup (data, model, caches) included, and cache entries that an
        # earlier cell built (the shared --cache-dir) counted as if this run had built them: each strategy's
        # time stands on its own, whatever order the grid ran in.
        start = result.setup_seconds + result.cache_seconds_saved
        curve = [{"epoch": h["epoch"], "seconds": round(start + h["seconds"], 3), "val_accuracy": h["val_accuracy"]}
                 for h in result.history]
        return CellResult(cell.strategy, cell.per_class, cell.seed, result.test["accuracy"],
                          result.test["macro_f1"], result.seconds + result.cache_seconds_saved, curve)

    options = {k: v if isinstance(v, int | float | str | bool) or v is None else str(v)
               for k, v in sorted(train_options.items()) if k != "callbacks"}
    meta = {"data": str(data), "model": model, "options": options}
    results = run_grid(cells, out, trainer, meta)
    factors = derived_factors(results)
    title = f"transferkit compare: {data}, {model}" + "".join(f", {k.replace('_', '-')} {v}"
                                                               for k, v in options.items())
    if not is_main_process():
        return {"results": results, "factors": factors, "out": out}
    write_json_atomic(out / RESULTS, {**meta, "cells": [asdict(r) for r in results], "factors": factors})
    (out / "summary.md").write_text(summary_markdown(results, factors, title), encoding="utf-8")
    write_report(out / "report.html", results, factors, title)
    return {"results": results, "factors": factors, "out": out}


def _require_test_split(data: str, model: str, train_options: dict[str, Any]) -> None:
    """Every cell is scored on the data's own test split: refuse, before training anything, data without one."""
    from dataclasses import fields

    from ..options import DataOptions, TrainConfig
    from ..prepare import load_data

    shaping = {k: v for k, v in train_options.items() if k in {f.name for f in fields(DataOptions)} - {"data"}}
    if train_options.get("evaluate_test") is False:
        raise TransferKitError("compare scores every run on the test split; drop evaluate_test=False.")
    test = load_data(TrainConfig(data=str(data), model=model, **shaping)).test
    if test is None or len(test) == 0:
        raise TransferKitError(f"compare needs a held-out test split, and {data} has none. Fix: use a folder with "
                               "train/ and test/ sub-folders, a CSV with a split column, a text folder with a test "
                               "file, or a builtin dataset.")
