"""``transferkit compare``: strategies x training-set sizes x seeds on one held-out test split, fair by construction.

- **Each strategy at its own recipe** (:data:`transferkit.strategies.RECIPES`): ``scratch`` gets a long budget and
  stops when its validation accuracy plateaus (patience relative to its schedule, never during warm-up), with its
  own LR and weight decay; transfer strategies keep ``train``'s defaults. Options given to ``compare`` apply to
  every strategy (``--recipes shared``: ``train``'s defaults for all, the old behaviour).
- **A small LR search** (``--tune lr``): per strategy and size, a few LRs on a log grid around the recipe's, each
  trained on seed 0 without evaluating the test split; the best validation accuracy picks the LR for every seed
  (seed 0 reuses the winning run).
- **Two views of data efficiency**: ``scratch`` trained to convergence, and ``scratch`` given each transfer
  strategy's own budget (the same passes over the training images) — cells with ``budget`` set (:mod:`.grid`).
- **Uncertainty**: every cell keeps its per-sample test results; accuracies, differences and factors get
  paired-bootstrap intervals over seeds and test samples (:mod:`.intervals`).

Each cell is an ordinary :func:`transferkit.train` run (shared feature / decoded caches), tested here on the data's
own test split after training (the same samples for every cell). The score of a cell is its task's main test figure
(classification: accuracy; segmentation: mIoU, with mean Dice second; the validation figure the LR search and the
convergence rule follow is the task's ``monitor``) and ``--per-class`` counts what the task says (segmentation:
training images). Intervals need per-sample results, which a dense task's mIoU does not decompose into: its report
gives means and spreads, and adds its test predictions side by side.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..data.samples import Samples
from ..data.splits import onto_classes, take_per_class
from ..distributed import is_main_process
from ..errors import TransferKitError, check_choice
from ..models.text import is_text_model
from ..runfolder import METRICS, RunFolder
from ..strategies import DEFAULT_HEAD_LR, DEFAULT_LR, DEFAULT_SCRATCH_LR, RECIPES, Recipe, default_lr, lr_grid
from ..tasks import get_task, infer_task
from ..training.checkpoint import CHECKPOINT, write_json_atomic
from .grid import (
    RESULTS,
    SCRATCH,
    Cell,
    CellResult,
    accuracy_intervals,
    comparisons,
    derived_factors,
    grid,
    recipe_table,
    run_grid,
)
from .intervals import bits, resampling
from .report import Names, summary_markdown, write_report

logger = logging.getLogger(__name__)

RECIPE_MODES = ("own", "shared")
TUNE = ("lr", "none")
LR_SEARCH = "lr_search.json"


def compare(data: str, *, model: str = "efficientnet_lite0", strategies: Sequence[str] = ("scratch", "linear-probe",
            "two-stage"), per_class: Sequence[int] = (10, 30, 100), seeds: int = 1,
            scratch_per_class: Sequence[int] = (), out: str | Path = "reports/compare", recipes: str = "own",
            tune: str = "lr", adapt: Sequence[str] = ("none",), retention: bool = True, progress: bool = False,
            **train_options: Any) -> dict[str, Any]:
    """Run the grid and write ``results.json``, ``summary.md`` and ``report.html`` to ``out``. Every run is tested
    on the data's own held-out test split (the same images for every cell); feature and decoded-input caches are
    shared between runs. Under ``torchrun`` every process runs the grid (each cell is a distributed run) and rank 0
    writes the files.

    Args:
        data: data with a held-out test split (every cell is tested on it).
        strategies: the strategies compared; with ``scratch`` among them, ``scratch`` also runs with each transfer
            strategy's budget (the equal-budget view).
        per_class: training examples per class; ``scratch_per_class``: extra sizes for ``scratch`` only.
        seeds: seeds per (strategy, size); 3 or more give intervals worth reading.
        recipes: ``own`` (each strategy's recipe) or ``shared`` (``train``'s defaults for all).
        tune: ``lr`` (the LR search) or ``none``.
        adapt: domain-adaptation methods as a grid axis (with ``target_data``): each method other than ``none``
            adds every pre-trained strategy trained with it (``two-stage+dann``); every cell is also scored on the
            target's labelled test split when it has one (a built-in shifted pair).
        retention: measure each pre-trained cell's retention of the pre-trained function (the ``forgetting``
            top-1 agreement on natural reference images; text: embedding cosine).
        **train_options: ``train`` options for every cell; they override the recipes.
    """
    check_choice("recipes", recipes, RECIPE_MODES)
    check_choice("tune", tune, TUNE)
    out = Path(out)
    from ..options import COMPARE_OWNS

    owned = sorted(set(train_options) & set(COMPARE_OWNS) - {"adapt", "cache_dir"})
    if owned:  # the grid sets these per cell (a rerun resumes rather than overwrites)
        raise TransferKitError(f"compare sets {', '.join(owned)} for each cell itself. Fix: leave "
                               f"{'it' if len(owned) == 1 else 'them'} out (strategies=, per_class=, seeds= choose the "
                               "cells; rerunning the same call resumes the grid; another out= starts a new one).")
    if "adapt" in train_options:  # compare's --adapt is a list: the grid axis
        raise TransferKitError("compare takes adapt as a list (adapt=['none', 'dann']), not a train option.")
    if any(m != "none" for m in adapt) and not train_options.get("target_data"):
        raise TransferKitError(f"--adapt {','.join(adapt)} needs unlabelled target images. Fix: pass --target-data "
                               "FOLDER (or builtin:fashion-mnist-m), or drop --adapt.")
    cells = grid(strategies, per_class, seeds, scratch_per_class, equal_budget=True, adapt=adapt)
    task = get_task(train_options.get("task") or infer_task(data)[0])
    train_options = {**train_options, "task": task.name}
    test, classes = _test_split(data, model, train_options, dense=task.dense)
    for name in sorted(set(train_options) & {"epochs", "lr", "augment", "weight_decay", "patience"}):
        if recipes == "own":
            logger.warning("--%s applies to every strategy and overrides its recipe (scratch too).",
                           name.replace("_", "-"))
    runner = CellRunner(data, model, out, train_options, recipes=recipes, tune=tune, test=test, classes=classes,
                        progress=progress, retention=retention)
    options = {k: v if isinstance(v, int | float | str | bool) or v is None else str(v)
               for k, v in sorted(train_options.items()) if k not in ("callbacks", "task")}  # task: meta's own
    # test_accuracy / macro_f1 of each cell hold the task's two headline figures, named in "metrics".
    meta = {"data": str(data), "model": model, "task": task.name, "metrics": list(task.headline), "options": options,
            "recipes": recipes, "tune": tune, "test_samples": len(test), "adapt": list(adapt), "retention": retention}
    results = run_grid(cells, out, runner.run, meta)
    runner.measure_search(results)
    return write_outputs(out, results, runner, meta, seeds)


def write_outputs(out: Path, results: Sequence[CellResult], runner: CellRunner, meta: dict[str, Any],
                  seeds: int) -> dict[str, Any]:
    """The derived claims (factors, intervals, distinguishability) and the three files (written by the main process
    only: under ``torchrun`` every process runs the grid)."""
    have_samples = all(r.test_correct for r in results)
    plan = resampling(len(results[0].test_correct), seeds) if have_samples and results else None
    factors = derived_factors(results, plan)
    intervals = accuracy_intervals(results, plan) if plan else {}
    pairs = comparisons(results, plan) if plan else []
    if not is_main_process():
        return {"results": results, "factors": factors, "comparisons": pairs, "out": out}
    saved = json.loads((out / RESULTS).read_text(encoding="utf-8")) if (out / RESULTS).is_file() else {}
    searched = runner.lr_search
    compute = sum(r.seconds for r in results) + sum(
        c["seconds"] for s in searched.values() for c in s["candidates"].values() if not c.get("reused"))
    document = {**saved, **meta, "cells": [asdict(r) for r in results], "factors": factors,
                "accuracy_intervals": [{"strategy": k[0], "budget": k[1], "per_class": k[2], "interval": v}
                                       for k, v in sorted(intervals.items())],
                "comparisons": pairs, "lr_search": searched, "recipes_used": recipe_table(results),
                "compute_seconds": round(compute, 1)}
    write_json_atomic(out / RESULTS, _finite(document))
    title = (f"transferkit compare: {meta['data']}, {meta['model']}, recipes {meta['recipes']}, tune {meta['tune']}"
             + "".join(f", {k.replace('_', '-')} {v}" for k, v in meta["options"].items()))
    task = runner.task
    main, second = task.headline
    names = Names(task.label(main), task.label(second), task.label(task.monitor), task.per_class)
    summary = summary_markdown(results, factors, title, names, intervals=intervals, comparisons=pairs,
                               lr_search=searched, wall_seconds=document.get("wall_seconds"),
                               compute_seconds=document["compute_seconds"])
    (out / "summary.md").write_text(summary, encoding="utf-8")
    pictures = _examples(task, results, runner.test) if task.dense and results else []
    write_report(out / "report.html", results, factors, title, summary, names, pictures)
    return {"results": results, "factors": factors, "comparisons": pairs, "out": out}


def _examples(task: Any, results: Sequence[CellResult], test: Any) -> list[tuple[str, Any]]:
    """Test images with each strategy's prediction at the largest size compared (seed 0, own recipe), for the
    report."""
    from ..predict import load

    size = max(r.per_class for r in results)
    runs = {r.strategy: load(r.run).model for r in results
            if r.per_class == size and r.seed == 0 and not r.budget and r.run}
    picture = task.example_figure(runs, test)
    return [(f"Test images, the truth and each strategy's prediction ({size} {task.per_class}, seed 0)", picture)]


class CellRunner:
    """Runs one cell: its options (recipe, budget, the LR search's choice, the given options), the training, and
    the test evaluation. The LR search's runs are recorded in ``out/lr_search.json`` as they finish (resumable)."""

    def __init__(self, data: str, model: str, out: Path, given: Mapping[str, Any], *, recipes: str, tune: str,
                 test: Samples, classes: list[str], progress: bool = False, cache_dir: Path | None = None,
                 retention: bool = True) -> None:
        self.data, self.model, self.out, self.given = str(data), model, Path(out), dict(given)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.out / "cache"
        self.recipes, self.tune, self.test, self.classes, self.progress = recipes, tune, test, classes, progress
        self.text = is_text_model(model)
        self.task = get_task(self.given.get("task"))
        self.retention = retention and not self.task.dense
        self._target_test: Any = None  # the target's labelled test split (loaded on first use; False: none)
        self._probe: Any = None  # the retention probe (the pre-trained model's outputs on the reference set)
        path = self.out / LR_SEARCH
        self.lr_search: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        self._budgets: dict[tuple[str, int], int] = {}

    # --- options ------------------------------------------------------------------------------------

    def recipe(self, strategy: str) -> Recipe:
        return RECIPES.get(strategy, Recipe()) if self.recipes == "own" else Recipe(lr_option=RECIPES.get(
            strategy, Recipe()).lr_option)

    def options(self, cell: Cell) -> dict[str, Any]:
        """The cell's ``train`` options before the LR search: its recipe, the options given to compare, and for a
        budget cell the epochs of the transfer strategy's budget."""
        batch = int(self.given.get("batch_size", 32))
        recipe = self.recipe(cell.base)
        if cell.budget:  # the scratch recipe, but the transfer strategy's number of passes over the data
            options = {**recipe.resolve(self.text, 0, batch), **self.given}
            options["epochs"] = self.budget_passes(cell.budget, cell.per_class)
            return options
        # The training set's size: --per-class counts examples per class (a dense task: images).
        examples = cell.per_class if self.task.dense else cell.per_class * len(self.classes)
        options = {**recipe.resolve(self.text, examples, batch), **self.given}
        if cell.adapt != "none":
            options["adapt"] = cell.adapt
        return options

    def budget_passes(self, strategy: str, per_class: int) -> int:
        """A strategy's training budget in passes over the training images: one per epoch on images, and one for
        the frozen backbone's feature cache (the exact head fit, head-only epochs on cached features)."""
        key = (strategy, per_class)
        if key not in self._budgets:
            phases = self.plan(Cell(strategy, per_class, 0), self.options(Cell(strategy, per_class, 0))).phases
            self._budgets[key] = (sum(p.epochs for p in phases if p.runs_on == "images")
                                  + int(any(p.runs_on != "images" for p in phases)))
        return self._budgets[key]

    def plan(self, cell: Cell, options: Mapping[str, Any]):
        from ..api import plan

        keep = {k: v for k, v in options.items() if k not in ("out", "overwrite", "evaluate_test")}
        # a detector's input size and anchors come from the data's boxes, so a dense task's plan reads the data
        return plan(self.data if self.task.dense else None, num_classes=len(self.classes),
                    **{**keep, "model": self.model, "strategy": cell.base})

    def searched_option(self, cell: Cell, options: Mapping[str, Any]) -> str | None:
        """The LR option the search varies for this cell, or None: no search asked, the option given explicitly, or
        nothing to search (every phase is the exact head fit)."""
        option = self.recipe(cell.base).lr_option
        if self.tune != "lr" or option is None or option in self.given or "lrs" in self.given:
            return None
        if all(p.runs_on == "exact-fit" for p in self.plan(cell, options).phases):
            return None
        from ..options import decays_by_default

        if option == "lr" and (options.get("lr_decay") is not None or decays_by_default(
                self.task.name, cell.base, options.get("lr"), options.get("lrs"))):
            # with layer-wise decay every group's LR follows the head's: --lr would change nothing
            return None if "head_lr" in self.given else "head_lr"
        return option

    def center(self, strategy: str, option: str, options: Mapping[str, Any]) -> float:
        if options.get(option) is not None:
            return float(options[option])
        if option == "head_lr":
            return DEFAULT_HEAD_LR
        return default_lr(strategy, self.text) or (DEFAULT_SCRATCH_LR if strategy == SCRATCH else DEFAULT_LR)

    # --- running ------------------------------------------------------------------------------------

    def twin(self, cell: Cell, options: Mapping[str, Any]) -> Cell | None:
        """For an equal-budget scratch cell, scratch's own cell of the same size and seed when it trains with exactly
        the same options (``--recipes shared``, where the transfer strategy's passes equal scratch's epochs, and no
        LR search on either): the same training run, so its folder serves both cells instead of training twice."""
        if not cell.budget or self.searched_option(cell, options) is not None:
            return None
        own = Cell(SCRATCH, cell.per_class, cell.seed)
        own_options = self.options(own)
        if self.searched_option(own, own_options) is not None or _plain(own_options) != _plain(options):
            return None
        return own

    def run(self, cell: Cell, run_dir: Path) -> CellResult:
        options = self.options(cell)
        twin = self.twin(cell, options)
        if twin is not None and RunFolder(run_dir.parent / twin.name).is_finished:
            logger.info("%s trains exactly as %s: its finished run is reused", cell.name, twin.name)
            return self.result(cell, run_dir.parent / twin.name, options)
        option = self.searched_option(cell, options)
        if option is not None:
            search = self.search(cell, options, option)
            options[option] = search["chosen"]
            if cell.seed == search["seed"]:  # the winning run of the search is this cell's run
                winner = search["candidates"][_key(search["chosen"])]
                winner["reused"] = True
                self._save_search()
                return self.result(cell, Path(winner["run"]), options)
        self.train(cell, options, run_dir)
        return self.result(cell, run_dir, options)

    def train(self, cell: Cell, options: Mapping[str, Any], run_dir: Path) -> None:
        """One ``train`` run into ``run_dir`` — never evaluating the test split (this class does that, afterwards)."""
        from ..api import train

        settings = {"data": self.data, "model": self.model, "strategy": cell.base, "per_class": cell.per_class,
                    "seed": cell.seed, "cache_dir": str(self.cache_dir), **options, "evaluate_test": False}
        if _interrupted_with(run_dir, settings):  # a grid killed mid-cell continues that cell where it stood
            logger.info("%s: continuing the interrupted run from its last checkpoint", cell.name)
            train(resume=str(run_dir), progress=self.progress, callbacks=options.get("callbacks") or ())
        else:
            train(out=str(run_dir), overwrite=True, progress=self.progress, **settings)
        shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)  # only a resume needs it; the weights are kept

    def search(self, cell: Cell, options: Mapping[str, Any], option: str) -> dict[str, Any]:
        """The LR search of the cell's group: each value on the grid trained on seed 0 and judged by its best
        validation accuracy (the test split is never evaluated); the best wins, a tie goes to the recipe's value,
        then to the smaller LR."""
        search = self.search_entry(cell, options, option)
        first = Cell(cell.strategy, cell.per_class, search["seed"], cell.budget)
        for value in search["values"]:
            if _key(value) not in search["candidates"]:
                search["candidates"][_key(value)] = self.train_candidate(first, options, option, value)
                self._save_search()
        if "chosen" not in search:
            self.decide(search, first.name)
            self._save_search()
        return search

    def search_entry(self, cell: Cell, options: Mapping[str, Any], option: str) -> dict[str, Any]:
        """The record of the cell's group's search (created empty: the values to try, none tried yet)."""
        center = self.center(cell.base, option, options)
        return self.lr_search.setdefault(search_key(cell), {"option": option, "default": center,
                                                            "values": lr_grid(center), "seed": 0, "candidates": {}})

    def train_candidate(self, first: Cell, options: Mapping[str, Any], option: str, value: float) -> dict[str, Any]:
        """One value of a search, trained on the group's first seed; its record (validation only)."""
        run_dir = self.out / "runs" / "lr-search" / f"{first.name}-{option.replace('_', '-')}-{_key(value)}"
        logger.info("LR search %s: %s %s", first.name, option, _key(value))
        self.train(first, {**options, option: value}, run_dir)
        info = RunFolder(run_dir).read_info()["metrics"]
        # "val_accuracy": the validation figure early stopping followed (the task's monitor; segmentation: mIoU).
        return {"value": value, "val_accuracy": info[f"val_{self.task.monitor}"], "best_epoch": info["best_epoch"],
                "epochs_run": info["epochs_run"], "seconds": round(info["seconds"] + info["cache_seconds_saved"], 2),
                "run": str(run_dir)}

    @staticmethod
    def decide(search: dict[str, Any], name: str = "") -> float:
        search["chosen"] = choose_lr({c["value"]: c["val_accuracy"] for c in search["candidates"].values()},
                                     search["default"])
        logger.info("LR search %s: %s %s chosen (validation accuracy %s)", name, search["option"],
                    _key(search["chosen"]), ", ".join(f"{k} {c['val_accuracy']:.3f}"
                                                      for k, c in search["candidates"].items()))
        return search["chosen"]

    def measure_search(self, results: Sequence[CellResult]) -> None:
        """After the grid (every choice made): what the search changed, on the test split — seed 0's test accuracy
        with the chosen LR and, where that is not the recipe's, with the recipe's LR. Reporting only: it chooses
        nothing."""
        by_cell = {r.cell: r for r in results}
        for key, search in self.lr_search.items():
            strategy, budget, n = key.split("|")
            chosen = by_cell.get(Cell(strategy, int(n), search["seed"], budget))
            default = search["candidates"].get(_key(search["default"]))
            if chosen is None or default is None or "chosen" not in search:
                continue
            search["chosen_test_accuracy"] = chosen.test_accuracy
            if "default_test_accuracy" not in search:
                same = math.isclose(search["chosen"], search["default"])
                search["default_test_accuracy"] = (chosen.test_accuracy if same else self.result(
                    Cell(strategy, int(n), search["seed"], budget), Path(default["run"]), {}).test_accuracy)
        self._save_search()

    def _save_search(self) -> None:
        if not is_main_process():
            return
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out / LR_SEARCH, self.lr_search)

    def result(self, cell: Cell, run_dir: Path, options: Mapping[str, Any]) -> CellResult:
        """The cell's record from its finished run folder, tested on the test split."""
        from ..predict import load

        info = RunFolder(run_dir).read_info()
        metrics = info["metrics"]
        history = [json.loads(line) for line in (run_dir / METRICS).read_text(encoding="utf-8").splitlines()
                   if line.strip()]
        # Seconds from the start of the run, setup (data, model, caches) included, and cache entries that an
        # earlier cell built (the shared cache folder) counted as if this run had built them: each strategy's
        # time stands on its own, whatever order the grid ran in.
        start = metrics["setup_seconds"] + metrics["cache_seconds_saved"]
        # The curve's "val_accuracy" is the validation figure early stopping followed (segmentation: mIoU).
        curve = [{"epoch": h["epoch"], "seconds": round(start + h["seconds"], 3),
                  "val_accuracy": h[f"val_{self.task.monitor}"]} for h in history]
        main, second = self.task.headline
        trained = load(run_dir)
        scores, correct = self.score(trained)
        passes = sum(h.get("inputs") == "images" for h in history) + int(any(h.get("inputs") != "images"
                                                                             for h in history))
        return CellResult(cell.strategy, cell.per_class, cell.seed, scores[main], scores[second],
                          round(metrics["seconds"] + metrics["cache_seconds_saved"], 3), curve, budget=cell.budget,
                          recipe=_plain(options), epochs_run=len(history), best_epoch=metrics["best_epoch"],
                          stopped=_stopped(info["phases"], history), images_seen=passes * info["data"]["train"],
                          test_correct=correct, run=str(run_dir), target_accuracy=self.target_accuracy(trained),
                          retention=self.kept(trained) if cell.base != SCRATCH else None)

    def target_accuracy(self, trained: Any) -> float | None:
        """Test accuracy on the target domain's labelled test split (``test_per_class`` of each class, as the
        source's), or ``None`` without one."""
        if not self.given.get("target_data") or self.task.dense:
            return None
        if self._target_test is None:
            from ..data.target import load_target

            test = load_target(self.given["target_data"]).test
            if test is not None and self.given.get("test_per_class") is not None:
                test, _ = take_per_class(test, self.given["test_per_class"], seed=0)
            self._target_test = test if test is not None and len(test) else False
        if self._target_test is False:
            return None
        test = onto_classes(self._target_test, trained.classes, "the target's test split")
        predicted = trained.predict_proba(test.items, batch_size=128).argmax(axis=1)
        return float((predicted == np.asarray(test.labels)).mean())

    def kept(self, trained: Any) -> float | None:
        """The run's retention of its pre-trained start (top-1 agreement; text: embedding cosine), or ``None``."""
        if not self.retention:
            return None
        from ..adaptation.forgetting import retention_probe

        try:
            if self._probe is None:
                self._probe = retention_probe(trained)
            measured = self._probe.measure(trained.model.cpu())
        except Exception as exc:  # a measurement must not end a grid (weights without their classifier, ...)
            logger.warning("Retention not measured for this grid: %s", exc)
            self.retention = False
            return None
        return measured.top1_agreement if measured.top1_agreement is not None else measured.embedding_cosine

    def score(self, trained: Any) -> tuple[dict[str, Any], str]:
        """A finished run's test figures and, for classification, its per-sample results (what the intervals
        resample; a dense task's figures do not decompose into per-sample ones: empty)."""
        if self.task.dense:
            return trained.evaluate(self.test), ""
        from ..evaluate import compute_metrics

        test = self.test if trained.classes == self.classes else onto_classes(self.test, trained.classes, "test")
        predicted = trained.predict_proba(test.items, batch_size=128).argmax(axis=1)
        truth = np.asarray(test.labels)
        scores = compute_metrics(truth, np.eye(len(trained.classes))[predicted], trained.classes)
        return scores, bits(predicted == truth)


def _interrupted_with(run_dir: Path, settings: Mapping[str, Any]) -> bool:
    """Whether ``run_dir`` holds an unfinished run with a checkpoint, started with these settings (every one the
    saved configuration records agrees): then the cell continues it instead of starting over."""
    folder = RunFolder(run_dir)
    if not run_dir.is_dir() or folder.is_finished or not folder.has_checkpoint:
        return False
    try:
        saved = folder.read_config()
    except (TransferKitError, OSError, ValueError):
        return False
    # the cache folder does not change what is trained (its entries are keyed by their contents): a worker of
    # benchmarks/fair_parallel.py continuing another worker's cell uses its own
    return all(_plain({k: saved[k]}) == _plain({k: v}) for k, v in settings.items()
               if k in saved and k not in ("cache_dir", "workers", "progress"))


def search_key(cell: Cell) -> str:
    """The LR search is per (strategy, budget, size): every seed of a group uses its choice."""
    return "|".join((cell.strategy, cell.budget, str(cell.per_class)))


def choose_lr(val_accuracy: Mapping[float, float], default: float) -> float:
    """The LR with the best validation accuracy; a tie goes to ``default``, then to the smaller LR."""
    best = max(val_accuracy.values())
    tied = sorted(v for v, acc in val_accuracy.items() if acc >= best - 1e-12)
    return default if any(math.isclose(v, default) for v in tied) else tied[0]


def _stopped(phases: list[dict[str, Any]], history: list[dict[str, Any]]) -> str:
    """How the last phase ended: ``exact fit``, ``plateau`` (early stopping) or ``budget`` (every epoch ran)."""
    last = phases[-1]
    if last["runs_on"] == "exact-fit":
        return "exact fit"
    ran = 0
    for record in reversed(history):
        if record["phase"] != last["name"]:
            break
        ran += 1
    return "plateau" if ran < last["epochs"] else "budget"


def _key(value: float) -> str:
    return f"{value:g}"


def _plain(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, int | float | str | bool) or v is None else str(v) for k, v in sorted(options.items())
            if k not in ("callbacks", "evaluate_test")}


def _finite(value: Any) -> Any:
    """``inf`` (a factor never reached) as ``None``: results.json stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _test_split(data: str, model: str, train_options: Mapping[str, Any], dense: bool = False) -> tuple[Any, list[str]]:
    """The test samples every cell is scored on (``test_per_class`` of each class, always the same ones) and the
    class names; refuses, before training anything, data without a test split."""
    from ..options import DataOptions, TrainConfig
    from ..prepare import load_data

    shaping = {k: v for k, v in train_options.items()
               if k in ({f.name for f in fields(DataOptions)} - {"data"}) | {"ignore_index"}}
    if train_options.get("evaluate_test") is False:
        raise TransferKitError("compare scores every run on the test split; drop evaluate_test=False.")
    split = load_data(TrainConfig(data=str(data), model=model, **shaping))
    test = split.test
    if test is None or len(test) == 0:
        raise TransferKitError(f"compare needs a held-out test split, and {data} has none. Fix: use a folder with "
                               "train/ and test/ sub-folders, a CSV with a split column, a text folder with a test "
                               "file, or a builtin dataset.")
    if train_options.get("test_per_class") is not None and not dense:  # a dense task's reader takes them itself
        test, _ = take_per_class(test, train_options["test_per_class"], seed=0)
    return test, list(split.classes)
