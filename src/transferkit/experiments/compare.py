"""``transferkit compare``: strategies x training-set sizes x seeds on one held-out test split.

Each cell is an ordinary :func:`transferkit.train` run (shared feature / decoded caches); the grid's bookkeeping
and the derived factors are in :mod:`.grid`, the files in :mod:`.report`. The score of a cell is its task's main test
figure (classification: accuracy; segmentation: mIoU, with mean Dice second) and ``--per-class`` counts what the task
says (segmentation: training images); a dense task's report adds its test predictions side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..distributed import is_main_process
from ..errors import TransferKitError
from ..tasks import get_task, infer_task
from ..training.checkpoint import write_json_atomic
from .grid import RESULTS, Cell, CellResult, derived_factors, grid, run_grid
from .report import Names, size_unit, summary_markdown, write_report


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
    task = get_task(train_options.get("task") or infer_task(data)[0])
    train_options = {**train_options, "task": task.name}
    test = _require_test_split(data, model, train_options)
    main, second = task.headline

    def trainer(cell: Cell, run_dir: Path) -> CellResult:
        result = train(data, model=model, strategy=cell.strategy, per_class=cell.per_class, seed=cell.seed,
                       out=str(run_dir), overwrite=True, cache_dir=str(out / "cache"), progress=progress,
                       **train_options)
        # Seconds from the start of the run, setup (data, model, caches) included, and cache entries that an
        # earlier cell built (the shared --cache-dir) counted as if this run had built them: each strategy's
        # time stands on its own, whatever order the grid ran in.
        start = result.setup_seconds + result.cache_seconds_saved
        # The curve's "val_accuracy" is the validation figure early stopping followed (segmentation: mIoU).
        curve = [{"epoch": h["epoch"], "seconds": round(start + h["seconds"], 3),
                  "val_accuracy": h[f"val_{task.monitor}"]} for h in result.history]
        return CellResult(cell.strategy, cell.per_class, cell.seed, result.test[main],
                          result.test[second], result.seconds + result.cache_seconds_saved, curve)

    options = {k: v if isinstance(v, int | float | str | bool) or v is None else str(v)
               for k, v in sorted(train_options.items()) if k != "callbacks"}
    # test_accuracy / macro_f1 of each cell hold the task's two headline figures, named in "metrics".
    meta = {"data": str(data), "model": model, "task": task.name, "metrics": [main, second], "options": options}
    results = run_grid(cells, out, trainer, meta)
    factors = derived_factors(results, size_unit(task.per_class))
    title = f"transferkit compare: {data}, {model}" + "".join(f", {k.replace('_', '-')} {v}"
                                                               for k, v in options.items())
    names = Names(task.label(main), task.label(second), task.label(task.monitor), task.per_class)
    if not is_main_process():
        return {"results": results, "factors": factors, "out": out}
    write_json_atomic(out / RESULTS, {**meta, "cells": [asdict(r) for r in results], "factors": factors})
    (out / "summary.md").write_text(summary_markdown(results, factors, title, names), encoding="utf-8")
    figures = _examples(task, out, results, test) if task.dense else []
    write_report(out / "report.html", results, factors, title, names, figures)
    return {"results": results, "factors": factors, "out": out}


def _examples(task: Any, out: Path, results: list[CellResult], test: Any) -> list[tuple[str, Any]]:
    """Test images with each strategy's prediction at the largest size compared (seed 0), for the report."""
    from ..predict import load

    size = max(r.per_class for r in results)
    runs = {r.strategy: load(out / "runs" / r.cell.name).model for r in results if r.per_class == size and r.seed == 0}
    picture = task.example_figure(runs, test)
    return [(f"Test images, the truth and each strategy's prediction ({size} {task.per_class}, seed 0)", picture)]


def _require_test_split(data: str, model: str, train_options: dict[str, Any]) -> Any:
    """Every cell is scored on the data's own test split: refuse, before training anything, data without one."""
    from dataclasses import fields

    from ..options import DataOptions, TrainConfig
    from ..prepare import load_data

    shaping = {k: v for k, v in train_options.items()
               if k in ({f.name for f in fields(DataOptions)} - {"data"}) | {"ignore_index"}}
    if train_options.get("evaluate_test") is False:
        raise TransferKitError("compare scores every run on the test split; drop evaluate_test=False.")
    test = load_data(TrainConfig(data=str(data), model=model, **shaping)).test
    if test is None or len(test) == 0:
        raise TransferKitError(f"compare needs a held-out test split, and {data} has none. Fix: use a folder with "
                               "train/ and test/ sub-folders, a CSV with a split column, a text folder with a test "
                               "file, or a builtin dataset.")
    return test
