"""Run a `transferkit compare` grid with several worker processes: the same cells, recipes, LR search and report as

    transferkit compare --data D --strategies S --per-class N --seeds K [--tune lr|none] [train options]

but up to --workers cells (or LR-search runs) at a time, each in its own 1-thread process, cheapest first (so a
grid cut short still has its small sizes complete; --order required-first runs the equal-budget scratch cells
last; --order long-first for the shortest total time). On a
shared, busy machine where every niced process gets a thin slice, several 1-thread workers finish a grid far sooner
than one. Resumable like compare (results.json and lr_search.json in --out); each worker logs to
OUT/logs/worker-PID.log and keeps its own cache folder (no two processes write one cache entry).

    nice -n 10 python benchmarks/fair_parallel.py --workers 4 --data builtin:fashion-mnist \\
        --per-class 10,30,100,300 --seeds 3 --tune none --out /work/fair-runs/fashion-mnist \\
        --set image_size=64 --set test_per_class=100
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402

from transferkit.experiments.compare import (  # noqa: E402
    CellRunner,
    _key,
    _test_split,
    search_key,
    write_outputs,
)
from transferkit.experiments.grid import RESULTS, Cell, CellResult, check_same_grid, grid  # noqa: E402
from transferkit.training.checkpoint import write_json_atomic  # noqa: E402

logger = logging.getLogger("fair_parallel")
_RUNNER: CellRunner | None = None


def _init_worker(config: dict[str, Any]) -> None:
    """Each worker: one torch thread, its own log file and cache folder, its own runner (test split loaded once)."""
    import torch

    global _RUNNER
    torch.set_num_threads(1)
    out = Path(config["out"])
    (out / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "logs" / f"worker-{os.getpid()}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    package = logging.getLogger("transferkit")
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False  # the parent's log keeps one line per finished cell
    test, classes = _test_split(config["data"], config["model"], config["given"], dense=_dense(config["given"]))
    _RUNNER = CellRunner(config["data"], config["model"], out, config["given"], recipes=config["recipes"],
                         tune=config["tune"], test=test, classes=classes, cache_dir=out / "cache" / str(os.getpid()),
                         retention=config["retention"])


def _work(kind: str, cell: Cell, options: dict[str, Any], extra: Any = None) -> Any:
    runner = _RUNNER
    if kind == "candidate":  # extra: (option, value)
        option, value = extra
        return runner.train_candidate(cell, options, option, value)
    if kind == "reuse":  # extra: the winning search run's folder
        return asdict(runner.result(cell, Path(extra), options))
    run_dir = runner.out / "runs" / cell.name
    runner.train(cell, options, run_dir)
    return asdict(runner.result(cell, run_dir, options))


def _dense(given: dict[str, Any]) -> bool:
    """A segmentation or detection grid (``--set task=...``): its reader takes ``test_per_class`` test images itself."""
    from transferkit.tasks import get_task

    return get_task(given.get("task")).dense


def _cost(cell: Cell, options: dict[str, Any]) -> float:
    return cell.per_class * float(options.get("epochs") or 10)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--strategies", default="scratch,linear-probe,two-stage")
    p.add_argument("--per-class", default="10,30,100")
    p.add_argument("--scratch-per-class", default="")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--recipes", default="own", choices=("own", "shared"))
    p.add_argument("--tune", default="lr", choices=("lr", "none"))
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--order", default="small-first", choices=("small-first", "required-first", "long-first"),
                   help="small-first: smallest size first; required-first: the same, but the equal-budget scratch "
                        "cells after all others (a grid cut short keeps every strategy at its own recipe); "
                        "long-first: the shortest total time")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a train option for every cell")
    p.add_argument("--retention", action="store_true", help="also measure each pre-trained cell's retention (as "
                   "compare does by default; off here, so grids started before it existed stay consistent)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    given = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    sizes = [int(v) for v in args.per_class.split(",") if v]
    extra = [int(v) for v in args.scratch_per_class.split(",") if v]
    cells = grid(args.strategies.split(","), sizes, args.seeds, extra, equal_budget=True)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    test, classes = _test_split(args.data, args.model, given, dense=_dense(given))
    runner = CellRunner(args.data, args.model, out, given, recipes=args.recipes, tune=args.tune, test=test,
                        classes=classes, retention=args.retention)
    options_text = {k: v if isinstance(v, int | float | str | bool) or v is None else str(v)
                    for k, v in sorted(given.items())}
    meta = {"data": args.data, "model": args.model, "options": options_text, "recipes": args.recipes,
            "tune": args.tune, "test_samples": len(test)}
    check_same_grid(out, meta)  # like compare: never mix cells trained with other settings
    saved = json.loads((out / RESULTS).read_text()) if (out / RESULTS).is_file() else {}
    done = {r.cell: r for r in (CellResult(**row) for row in saved.get("cells", []))}
    wall, started = float(saved.get("wall_seconds", 0.0)), time.perf_counter()

    def record() -> None:
        write_json_atomic(out / RESULTS, {**saved, **meta, "cells": [asdict(r) for r in done.values()],
                                          "wall_seconds": round(wall + time.perf_counter() - started, 1)})

    config = {"out": str(out), "data": args.data, "model": args.model, "given": given, "recipes": args.recipes,
              "tune": args.tune, "retention": args.retention}
    parked: dict[str, list[tuple[Cell, dict[str, Any], str]]] = {}
    ready: list[tuple[str, Cell, dict[str, Any], Any]] = []
    twins: dict[Cell, list[tuple[Cell, dict[str, Any]]]] = {}  # scratch's own cell -> budget cells it serves
    for cell in cells:
        if cell in done:
            continue
        options = runner.options(cell)
        twin = runner.twin(cell, options)
        if twin is not None:  # the same run as scratch's own cell: scored from its folder once that is done
            if twin in done:
                ready.append(("reuse", cell, options, done[twin].run))
            else:
                twins.setdefault(twin, []).append((cell, options))
            continue
        option = runner.searched_option(cell, options)
        if option is None:
            ready.append(("cell", cell, options, None))
            continue
        search = runner.search_entry(cell, options, option)
        key = search_key(cell)
        if "chosen" not in search and len(search["candidates"]) == len(search["values"]):
            runner.decide(search, key)
        if "chosen" in search:
            ready.append(_chosen_task(cell, options, option, search))
            continue
        if key not in parked:
            first = Cell(cell.strategy, cell.per_class, search["seed"], cell.budget)
            ready += [("candidate", first, options, (option, v)) for v in search["values"]
                      if _key(v) not in search["candidates"]]
        parked.setdefault(key, []).append((cell, options, option))
    runner._save_search()
    logger.info("%d cells to run (%d done earlier), %d LR-search runs first for %d groups; %d equal-budget cells "
                "train exactly as scratch's own and reuse its run", len(cells) - len(done), len(done),
                sum(t[0] == "candidate" for t in ready), len(parked), sum(len(v) for v in twins.values()))
    running: dict[Future, tuple[str, Cell, Any]] = {}
    with ProcessPoolExecutor(args.workers, initializer=_init_worker, initargs=(config,)) as pool:
        def submit(tasks: list) -> None:
            def order(task: tuple) -> tuple:
                cost = _cost(task[1], task[2])
                if args.order == "long-first":
                    return (-cost,)
                if args.order == "required-first":  # within a size the longest first: the short ones fill in
                    return (bool(task[1].budget), task[1].per_class, -cost)
                return (task[1].per_class, cost)

            for kind, cell, options, extra in sorted(tasks, key=order):
                running[pool.submit(_work, kind, cell, options, extra)] = (kind, cell, extra)

        submit(ready)
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                kind, cell, extra = running.pop(future)
                value = future.result()
                if kind != "candidate":
                    done[cell] = CellResult(**value)
                    record()
                    write_outputs(out, [done[c] for c in cells if c in done], runner, meta, args.seeds)
                    logger.info("done %s: test accuracy %.3f (%d of %d cells)", cell.name, done[cell].test_accuracy,
                                sum(c in done for c in cells), len(cells))
                    submit([("reuse", c, o, done[cell].run) for c, o in twins.pop(cell, [])])
                    continue
                search = runner.lr_search[search_key(cell)]
                search["candidates"][_key(extra[1])] = value
                logger.info("LR search %s: %s %s val %.3f", cell.name, extra[0], _key(extra[1]), value["val_accuracy"])
                if len(search["candidates"]) == len(search["values"]):
                    runner.decide(search, search_key(cell))
                    submit([_chosen_task(c, o, opt, search) for c, o, opt in parked.pop(search_key(cell), [])])
                runner._save_search()
    results = [done[c] for c in cells]
    runner.measure_search(results)
    write_outputs(out, results, runner, meta, args.seeds)
    logger.info("grid done: %s", out / "summary.md")


def _chosen_task(cell: Cell, options: dict[str, Any], option: str, search: dict[str, Any]) -> tuple:
    options = {**options, option: search["chosen"]}
    if cell.seed == search["seed"]:
        winner = search["candidates"][_key(search["chosen"])]
        winner["reused"] = True
        return "reuse", cell, options, winner["run"]
    return "cell", cell, options, None


if __name__ == "__main__":
    sys.exit(main())
