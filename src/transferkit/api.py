"""``transferkit.train``: data + model source + strategy in, a finished run folder out; ``transferkit.plan``: what
it would do.

Order of work: validate everything (configuration, data, model) before the run folder exists, then train, then
write the final weights and ``transferkit.json`` last. A failure before the first checkpoint removes the new
folder; a failure after it leaves a resumable run (``--resume``).

Under ``torchrun`` / ``accelerate launch`` every process runs this same function as one
:class:`~transferkit.distributed.World`: rank 0 names the run folder and is its only writer; the checks run in
every process and a failure in any of them stops all; caches are built by one process and read by the others;
the test set is split among the processes and gathered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from accelerate.utils import set_seed

from . import distributed, prepare
from .allocator import keep_freed_memory
from .cache import CacheUse, weights_fingerprint
from .data.checks import check_normalization
from .data.samples import SplitData
from .data.splits import onto_classes, take_per_class
from .errors import TransferKitError
from .evaluate import compute_metrics
from .options import AUTO_UNMEASURED, TrainConfig, check_names, load_recipe, merge_options, train_option_names
from .plan import Plan, make_plan
from .predict import TrainedModel
from .runfolder import RunFolder
from .strategies import uses_pretrained_weights
from .tasks import get_task
from .training.callbacks import Callback
from .training.loop import fit

logger = logging.getLogger(__name__)

# Re-exported: ``transferkit.TrainConfig`` is where the README points users for the list of options.
__all__ = ["TrainConfig", "TrainResult", "plan", "train"]


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run is, how it went, and the trained model.

    ``val_score`` is the best epoch's validation ``val_metric`` (accuracy; segmentation: mIoU), ``test`` the task's
    test metrics (classification: accuracy, macro-F1...; segmentation: miou, mean_dice, pixel_accuracy, per_class).

    ``seconds`` is the wall time of training: loading data and model, building the caches, and the
    epochs (not the final test-set evaluation); ``setup_seconds`` is the part before the first epoch (the
    ``seconds`` of each ``history`` entry count from there); ``cache_seconds_saved`` is what the cache entries
    this run reused from earlier runs (``--cache-dir``) took to build.
    """

    run_dir: Path
    best_epoch: int
    val_score: float
    seconds: float
    history: list[dict[str, Any]]
    test: dict[str, Any] | None
    model: TrainedModel
    data_description: str = ""
    setup_seconds: float = 0.0
    cache_seconds_saved: float = 0.0
    task: str = "classification"
    val_metric: str = "accuracy"

    @property
    def val_accuracy(self) -> float:
        """The best validation score (accuracy for classification: the name this field had)."""
        return self.val_score


def train(data: str | Path | None = None, *, resume: str | Path | None = None, config: str | Path | None = None,
          callbacks: Sequence[Callback] = (), progress: bool = True, **options: Any) -> TrainResult:
    """Fine-tune a pre-trained model on ``data`` and write a run folder.

    Args:
        data: ``builtin:NAME``, an image-folder tree, a folder of class folders, a CSV manifest, or text data.
        resume: an interrupted run folder to continue (its saved configuration is used).
        config: a recipe file (YAML or TOML) that sets options; ``data`` and ``options`` override it.
        callbacks: observers of the training loop.
        progress: show progress bars.
        **options: any :class:`TrainConfig` field, e.g. ``model="efficientnet_lite0"``, ``strategy="two-stage"``,
            ``epochs=10``, ``out="runs/pets"``.

    Returns:
        A :class:`TrainResult`; ``result.model.predict([...])`` runs inference.
    """
    _console_logging()
    run_config, run = _resolve(data, resume, config, options)
    world = distributed.join(cpu=run_config.cpu)
    progress = progress and world.is_main
    given = set(options) | (set(load_recipe(config)) if config else set())  # what --strategy auto must keep
    with world.together():  # a failure in any process stops every process, with its one-line message
        return _train(run_config, run, world, resume is not None, callbacks, progress, given)


def _train(run_config: TrainConfig, run: RunFolder, world: distributed.World, resumed: bool,
           callbacks: Sequence[Callback], progress: bool, given: set[str] | None = None) -> TrainResult:
    started = time.perf_counter()
    allocator = keep_freed_memory(run_config.cpu_allocator)  # before the data and the model take their memory
    task = get_task(run_config.task)
    if not resumed:
        run_config.out = world.broadcast(run_config.out)  # the name rank 0 chose (its default carries the time)
    run = RunFolder(run_config.out if not resumed else run.path, main_process=world.is_main)
    split, model, run_plan, state, target = world.agreed(_validated, run_config, run, world, resumed)
    start_phase = state["phase_index"] if state else 0
    if resumed:
        run.rewrite_metrics(state["history"])
    else:
        run.create(run_config, run_config.overwrite)
    auto = None
    try:
        cache_use = CacheUse()
        cache_dir = Path(run_config.cache_dir) if run_config.cache_dir else run.path / "feature-cache"
        if run_config.strategy == "auto":
            run_config, model, run_plan, auto = world.first_on_each_file_system(lambda: _choose_strategy(
                run_config, split, model, given or set(), cache_dir, progress, cache_use, world.device, world.size))
            logger.info("%s", run_plan)
            run.create(run_config, False)  # config.yaml: the resolved options (what --resume reads)
        features, (train_loader, val_loader) = world.first_on_each_file_system(lambda: (
            prepare.head_features(model, split, run_config, run_plan, start_phase, cache_dir, progress, cache_use,
                                  world),
            prepare.loaders(split, model, run_config, run_plan, start_phase, cache_dir, progress, cache_use, world)))
        activations = world.first_on_each_file_system(lambda: prepare.prefix_activations(
            model, split, run_config, run_plan, start_phase, train_loader, val_loader, cache_dir, progress, cache_use,
            world))
        if not model.is_text and world.is_main:
            for warning in check_normalization(val_loader, model.preprocessing):
                logger.warning("Normalisation check: %s", warning)
        adaptation = None
        if target.method != "none":
            adaptation = prepare.domain_adaptation(model, target.data, run_config, run_plan, len(train_loader),
                                                   len(split.classes))
            model.domain_adversary = adaptation.adversary  # a submodule while training: checkpoints carry it
        if target.val is not None:
            val_loader = prepare.eval_loader(target.val, model, run_config, world)
        setup_seconds = time.perf_counter() - started  # data, model, feature and decoded caches
        keeper = _ProbeHeadKeeper(run, model, run_plan.phases)
        on_device = prepare.batch_transform(train_loader)
        fit_settings = prepare.fit_config(model, split, run_config, run_plan, progress)
        fit_settings.deadline = started + run_config.budget if run_config.budget else None
        if run_config.budget and setup_seconds >= run_config.budget and world.is_main:
            logger.warning("Budget: the %g s were spent before training started: the data, the model, the "
                           "caches%s took %.0f s. The first epoch runs anyway, then the run stops with it. Fix: pass "
                           "a budget above %.0f s to leave time for training (with --cache-dir DIR later runs reuse "
                           "the caches and start sooner).", run_config.budget,
                           " and auto's measurement" if auto is not None else "", setup_seconds, setup_seconds)
        result = fit(model, train_loader, val_loader, run_plan.phases, fit_settings, run=run,
                     resume=resumed, callbacks=[_MetricsWriter(run, task.label(task.monitor)), keeper, *callbacks],
                     features=features, world=world, objective=task.objective(run_config, split),
                     adaptation=adaptation, activations=activations,
                     batch_transform=on_device)
        if adaptation is not None:
            del model.domain_adversary  # not part of the trained model
    except BaseException:
        if not resumed:
            run.discard_if_unstarted()
        raise

    extra = {"wise_ft": _wise_ft(model, split, run_config, run, keeper.head, progress)} if run_config.wise_ft else {}
    if auto is not None:
        extra["auto"] = auto
    if not model.is_text and not task.dense:
        extra["device_augment"] = {"setting": run_config.device_augment, "used": on_device is not None}
    extra["cpu_allocator"] = {"setting": run_config.cpu_allocator, "keeps_freed_memory": allocator}
    if result.budget is not None:
        extra["budget"] = {"seconds": run_config.budget, "setup_seconds": round(setup_seconds, 2), **result.budget}
    run.save_model(model)
    trained = TrainedModel(model, split.classes, tta=run_config.tta)
    test = _test_metrics(trained, split, run_config, world) if run_config.evaluate_test else None
    if target.data is not None:
        extra["adaptation"] = target.record(_score(trained, target.data.test, run_config, world)
                                            if run_config.evaluate_test else None)
    seconds = setup_seconds + result.seconds
    info = run.finish(model=model, data=split, config=run_config, plan=run_plan, result=result, test=test,
                      timings={"seconds": seconds, "setup_seconds": setup_seconds, "fit_seconds": result.seconds,
                               "cache_seconds_built": cache_use.built_seconds,
                               "cache_seconds_saved": cache_use.saved_seconds},
                      distributed=_processes_report(world, run_plan, model, cache_use), extra=extra)
    name = task.label(task.monitor)
    logger.info("Done: best epoch %d of %d, val %s %.4f%s, %.1f s — %s", result.best_epoch, len(result.history), name,
                result.best_val_score, f", test {name} {test[task.headline[0]]:.4f}" if test else "", seconds,
                run.path)
    return TrainResult(run.path, result.best_epoch, result.best_val_score, seconds, result.history, test,
                       TrainedModel(model, split.classes, info, run.path), split.description, setup_seconds,
                       cache_use.saved_seconds, task.name, task.monitor)


def _validated(config: TrainConfig, run: RunFolder, world: distributed.World,
               resumed: bool) -> tuple[SplitData, Any, Plan, dict[str, Any] | None, _Target]:
    """Everything checked before the run folder is written, in every process: the folder, the batch split, the
    data (the target domain's too), the model and the plan; returns them with the checkpoint's state of a resumed
    run."""
    state = None
    if resumed:
        state = run.checkpoint_state()  # every process reads the checkpoint: the run folder must be visible to all
        world.check_batch_size(config.batch_size, resumed=True)
        if state.get("processes", 1) != world.size:
            logger.info("Resuming a run started with %d process(es) on %d: the global batch stays %d (%d per "
                        "process), so the data order and the LR schedule continue unchanged.",
                        state.get("processes", 1), world.size, config.batch_size, config.batch_size // world.size)
    else:
        run.check_new(config.overwrite)
        world.check_batch_size(config.batch_size)
    set_seed(config.seed)
    split = prepare.load_data(config)
    model = prepare.load_run_model(config, len(split.classes))
    target = _Target.load(config, split, world)
    run_plan = make_plan(model, config, processes=world.size) if config.strategy != "auto" else None
    logger.info("Data: %s — %d train, %d val %s, %d classes", split.description, len(split.train), len(split.val),
                split.unit, len(split.classes))
    if run_plan is not None:  # --strategy auto: planned once the data is measured (_choose_strategy)
        logger.info("%s", run_plan)
    return split, model, run_plan, state, target


def _choose_strategy(config: TrainConfig, split: SplitData, model: Any, given: set[str], cache_dir: Path,
                     progress: bool, use: CacheUse | None, device: Any,
                     processes: int) -> tuple[TrainConfig, Any, Plan, dict]:
    """``--strategy auto``: measure the data as ``advise`` does — on the full splits, through the feature cache, with
    the keys the head stage uses, so that stage reuses them — and apply the advice: its strategy, and its options
    except those the user set (``given``). Returns the resolved configuration, the model (reloaded when the advice
    changes its input size), the plan (its notes start with the reasons) and what ``transferkit.json`` records.

    The rules are ``advise``'s own (:func:`transferkit.experiments.advise.recommend`), imported from the layer above so
    that ``advise`` and ``auto`` can never disagree."""
    import dataclasses

    from .experiments.advise import auto_options, measure_loaded, recommend

    measurements = measure_loaded(model, split, split.train, split.val, cache_dir, seed=config.seed,
                                  progress=progress, device=device, use=use)
    advice = recommend(measurements)
    applied, kept = auto_options(advice, given, config)
    resolved = dataclasses.replace(config, strategy=advice.strategy, **applied)
    resolved.validate()
    if resolved.image_size != config.image_size:
        model = prepare.load_run_model(resolved, len(split.classes))
    run_plan = make_plan(model, resolved, processes=processes)
    lines = [f"Strategy auto chose {advice.strategy}"
             + (f" with {', '.join(f'--{k.replace(chr(95), chr(45))} {v}' for k, v in applied.items())}"
                if applied else "")
             + (f" (kept as you set: {', '.join(f'--{k.replace(chr(95), chr(45))}' for k in kept)})" if kept else "")
             + ", because:", *(f"  - {reason}" for reason in advice.reasons),
             *(f"  ! {warning}" for warning in advice.warnings)]
    run_plan = dataclasses.replace(run_plan, notes=(*lines, *run_plan.notes))
    record = {"strategy": advice.strategy, "options": applied, "kept": kept, "reasons": advice.reasons,
              "warnings": advice.warnings, "measurements": advice.measurements}
    return resolved, model, run_plan, record


@dataclass
class _Target:
    """The target domain of a run: unlabelled images to adapt to, an optional labelled ``--target-val``, and how
    the model is selected."""

    method: str = "none"
    data: Any = None  # data.target.TargetData
    val: Any = None  # ImageSamples of --target-val
    spec: str | None = None
    val_spec: str | None = None

    @classmethod
    def load(cls, config: TrainConfig, split: SplitData, world: distributed.World) -> _Target:
        if not config.target_data:
            return cls()
        from .data.sources import eval_split
        from .data.target import load_target

        if config.adapt != "none" and world.size > 1:
            raise TransferKitError(f"--adapt {config.adapt} runs in one process for now. Fix: run it without "
                                   "torchrun / accelerate launch.")
        data = load_target(config.target_data, skip_bad_images=config.skip_bad_images)
        if data.test is not None:  # scored after training only; its class indices follow the run's classes
            data.test = onto_classes(data.test, split.classes, f"the test split of {config.target_data}")
        try:
            val = eval_split(config.target_val, split.classes).samples if config.target_val else None
        except TransferKitError as exc:
            raise TransferKitError(f"--target-val: {exc}") from exc
        logger.info("Target: %s%s", data.description, f"; selecting on --target-val {config.target_val} "
                    f"({len(val)} labelled)" if val is not None else "; selecting on the source validation split")
        return cls(config.adapt, data, val, config.target_data, config.target_val)

    def record(self, target_test: dict[str, Any] | None) -> dict[str, Any]:
        """What ``transferkit.json``'s ``adaptation`` says."""
        return {"method": self.method, "target_data": self.data.description,
                "selected_on": f"--target-val {self.val_spec}" if self.val_spec else "the source validation split",
                "target_labels_read": (f"only --target-val's ({len(self.val)} images), for model selection"
                                       if self.val is not None else "none"),
                "target_test": target_test}


def _processes_report(world: distributed.World, run_plan: Plan, model: Any, use: CacheUse) -> dict[str, Any]:
    """What ``transferkit.json`` says about the processes: the batch split, what each process built, and a
    fingerprint of each one's final weights (equal when they stayed in step)."""
    fingerprint = weights_fingerprint(model)[:16] if world.size > 1 else None
    per_process = world.gather({"cache_entries_built": use.built, "cache_entries_reused": use.reused,
                                "weights_sha256": fingerprint})
    if len({p["weights_sha256"] for p in per_process}) > 1:
        logger.error("The processes ended with different weights (%s): please report this.",
                     ", ".join(p["weights_sha256"] for p in per_process))
    exact = any(p.runs_on == "exact-fit" for p in run_plan.phases) and world.size > 1
    return {**run_plan.distribution, **({"exact_head_fit": "fitted once by process 0, sent to the others"}
                                        if exact else {}), "per_process": per_process}


def plan(data: str | Path | None = None, *, num_classes: int | None = None, config: str | Path | None = None,
         processes: int | None = None, **options: Any) -> Plan:
    """What :func:`train` would do with these options, without training.

    With ``--strategy auto`` (the default) and ``data``, the data is measured as ``train`` would (the pre-trained
    backbone runs once over it; a temporary feature cache) and the plan is the chosen strategy's, with the reasons
    in its notes. Without ``data`` nothing is measured: the plan is two-stage's (what auto runs when fine-tuning
    pays), and a note says so. Otherwise nothing is downloaded.

    Args:
        data: training data: counts the classes, and what ``--strategy auto`` measures (optional).
        num_classes: the number of classes when ``data`` is not given (default 10).
        config: a recipe file (YAML or TOML); ``options`` override it.
        processes: plan for this many processes (default: this launch's, 1 outside ``torchrun``).
        **options: any :class:`TrainConfig` field.
    """
    import dataclasses
    import tempfile

    check_names(options, TrainConfig)
    recipe = load_recipe(config) if config else {}
    merged = merge_options(recipe, {**options, "data": None if data is None else str(data)})
    merged.setdefault("data", "")
    run_config = TrainConfig(**merged).validate()
    processes = processes or distributed.launched_processes()
    distributed.World(size=processes).check_batch_size(run_config.batch_size)
    why_unmeasured = "no data given"
    measuring = run_config.strategy == "auto" and bool(run_config.data)
    if measuring:
        keep_freed_memory(run_config.cpu_allocator)  # measuring runs the backbone over the data, as train would
    split = prepare.load_data(run_config) if run_config.data else None
    if measuring:
        try:
            model = prepare.load_run_model(run_config, len(split.classes))
        except TransferKitError as exc:  # the plan must not fail where training would have the weights
            why_unmeasured = f"the pre-trained weights could not be loaded: {exc}"
        else:
            with tempfile.TemporaryDirectory() as cache:
                return _choose_strategy(run_config, split, model, set(options) | set(recipe), Path(cache), False,
                                        None, None, processes)[2]
    unmeasured = run_config.strategy == "auto"
    if unmeasured:
        run_config = dataclasses.replace(run_config, strategy=AUTO_UNMEASURED)
    if split is not None:
        num_classes = len(split.classes)
    model = prepare.load_run_model(run_config, num_classes or 10, pretrained=False)
    scratch = not uses_pretrained_weights(run_config.strategy)
    model.spec.weights = "random" if scratch else (run_config.weights or "pre-trained")  # what training would load
    run_plan = make_plan(model, run_config, processes=processes)
    if unmeasured:
        note = (f"Strategy auto (the default) is chosen when train measures the data, and here it cannot "
                f"({why_unmeasured}): this is the plan of {AUTO_UNMEASURED}, its choice when fine-tuning pays. "
                "`transferkit advise DATA` shows the choice for your data and its reasons.")
        run_plan = dataclasses.replace(run_plan, notes=(note, *run_plan.notes))
    return run_plan


# --- helpers ---------------------------------------------------------------------------------------


def _resolve(data: str | Path | None, resume: str | Path | None, config: str | Path | None,
             options: Mapping[str, Any]) -> tuple[TrainConfig, RunFolder]:
    """The validated configuration and the run folder: a resumed run's saved settings, or recipe + options."""
    check_names(options, TrainConfig)
    if resume is not None:
        run = RunFolder(resume)
        saved = run.read_config()
        if run.is_finished:
            raise TransferKitError(f"{run.path} already finished; nothing to resume. Fix: load it with "
                                   "transferkit.load, or start a new run with another --out.")
        if not run.has_checkpoint:
            raise TransferKitError(f"{run.path} has no checkpoint (it stopped before the first epoch ended). "
                                   f"Fix: start it over with `transferkit train --config {run.path / 'config.yaml'} "
                                   f"--out {run.path}` (or the command that started it, without --resume).")
        known = set(train_option_names())  # a run made by another version may hold names this one lacks
        dropped = sorted(set(saved) - known - {"out", "overwrite"})
        if dropped:
            logger.warning("%s: ignoring saved option(s) this transferkit does not know: %s", run.path,
                           ", ".join(dropped))
        try:
            return TrainConfig.from_options({k: v for k, v in saved.items() if k in known}), run
        except TransferKitError as exc:
            raise TransferKitError(f"The saved configuration of {run.path} is not valid: {exc} Fix: restore the "
                                   "file from the interrupted run, or start again with --overwrite --out "
                                   f"{run.path}.") from exc
    run_config = TrainConfig.from_options(merge_options(load_recipe(config) if config else {},
                                                        {**options, "data": None if data is None else str(data)}))
    if run_config.out is None:
        short = run_config.model.split(":")[-1].split("/")[-1]
        run_config.out = str(Path("runs") / f"{short}-{run_config.strategy}-{time.strftime('%Y%m%d-%H%M%S')}")
    return run_config, RunFolder(run_config.out)  # checked (RunFolder.check_new) once every process has joined


def _test_metrics(trained: TrainedModel, data: SplitData, config: TrainConfig,
                  world: distributed.World) -> dict[str, Any] | None:
    """Test metrics; each process predicts its share of the test set, and the shares are gathered in order."""
    return _score(trained, data.test, config, world)


def _score(trained: TrainedModel, test: Any, config: TrainConfig, world: distributed.World) -> dict[str, Any] | None:
    """Metrics on labelled samples (``None`` for none); each process predicts its share, gathered in order."""
    if test is None or len(test) == 0:
        return None
    task = get_task(config.task)
    if task.dense:  # --test-per-class was applied when the data was read; the task's sums are reduced
        trained.model.to(world.device)
        metrics = task.evaluate(trained.model, test.subset(list(world.share(len(test)))), trained.classes,
                                max(16, config.batch_size), reduce=world.sum, ignore_index=config.ignore_index)
        trained.model.cpu()
        return metrics
    if config.test_per_class is not None:
        test, _ = take_per_class(test, config.test_per_class, seed=0)
    trained.model.to(world.device)
    share = world.share(len(test))
    probabilities = trained._probabilities([test.items[i] for i in share], batch_size=max(64, config.batch_size))
    trained.model.cpu()
    probabilities = np.concatenate(world.gather(probabilities))
    return compute_metrics(np.asarray(test.labels), probabilities, trained.classes)


class _ProbeHeadKeeper(Callback):
    """Keeps the head as it is when the head-only stage ends (the linear probe: WiSE-FT's start point) in memory
    and in the run folder (``probe_head.safetensors``)."""

    def __init__(self, run: RunFolder, model: Any, phases: Sequence[Any]) -> None:
        self.run, self.model, self.phases = run, model, phases
        self.head = run.probe_head()  # a resumed run saved it before it stopped

    def on_epoch_start(self, state: Any) -> None:
        index = state.phase_index
        if self.head is not None or index == 0 or state.phase_epoch != 0:
            return
        if set(self.phases[index - 1].trainable) == {"head"} and set(self.phases[index].trainable) != {"head"}:
            self.head = {k: v.detach().cpu().clone() for k, v in self.model.head.state_dict().items()}
            self.run.save_probe_head(self.head)


def _wise_ft(model: Any, split: SplitData, config: TrainConfig, run: RunFolder, probe_head: Any,
             progress: bool) -> dict[str, Any]:
    """``--wise-ft``: θ(α) between the pre-trained backbone + linear probe and the trained model, α chosen on the
    validation split; leaves θ(α*) in ``model`` and writes interpolation.json / .png."""
    from dataclasses import asdict

    from .adaptation.interpolate import DEFAULT_ALPHAS, parse_alphas, save_plot, sweep_record, wise_ft
    from .runfolder import INTERPOLATION

    start = prepare.load_run_model(config, len(split.classes), pretrained=True)
    info = {"modality": model.modality, "model": asdict(model.spec), "config": asdict(config)}
    points, chosen, probe_source = wise_ft(model, start, probe_head, split, alphas=parse_alphas(DEFAULT_ALPHAS),
                                           info=info, batch_size=max(64, config.batch_size), progress=progress)
    record = sweep_record(points, chosen, chosen_on="the run's validation split", probe_head=probe_source,
                          bn_recalibrated=False)
    run.save_json(INTERPOLATION, record)
    png = save_plot(points, run.path / "interpolation.png", chosen.alpha) if run.main_process else None
    logger.info("WiSE-FT: alpha %.2f (val accuracy %.4f; the fine-tuned model, alpha 1: %.4f)", chosen.alpha,
                chosen.val_accuracy, points[-1].val_accuracy)
    return {**record, "plot": str(png) if png else None}


class _MetricsWriter(Callback):
    """Appends each epoch's record to ``metrics.jsonl`` and logs a one-line summary."""

    def __init__(self, run: RunFolder, monitor: str = "accuracy") -> None:
        self.run = run
        self.monitor = monitor  # the name of the validation figure early stopping follows, for the log line

    def on_epoch_end(self, record: dict[str, Any], state: Any) -> None:
        self.run.append_metrics(record)
        extra = "".join(f" {self.monitor} {v:.4f}" for k, v in record.items()
                        if k.startswith("val_") and k not in ("val_loss", "val_accuracy"))
        if "val_accuracy" not in record:  # a task without an accuracy (detection): its validation figures by name
            extra = "".join(f" {k.removeprefix('val_')} {v:.4f}" for k, v in record.items()
                            if k.startswith("val_") and k != "val_loss" and isinstance(v, float))
        accuracy = {k: f" acc {record[k]:.4f}" if k in record else "" for k in ("train_accuracy", "val_accuracy")}
        logger.info("epoch %d [%s] train loss %.4f%s | val loss %.4f%s%s | %.0f samples/s | %.0f s%s",
                    record["epoch"], record["phase"], record["train_loss"], accuracy["train_accuracy"],
                    record["val_loss"], accuracy["val_accuracy"], extra, record["train_samples_per_s"],
                    record["seconds"], " *" if record["best_epoch"] == record["epoch"] else "")


def _console_logging() -> None:
    """Show transferkit's progress messages when the caller has not configured logging."""
    package = logging.getLogger("transferkit")
    if not package.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO if distributed.is_main_process() else logging.WARNING)  # one voice per job
