"""The ``transferkit`` command: thin commands, each mapping to one library call.

Every option is generated from the schema in :mod:`transferkit.options` (help text, default, section), so
``train``, ``plan``, ``compare`` and ``advise`` cannot disagree about an option. Options not given on the command
line stay ``None`` here, which is how a recipe (``--config``) knows what the command line overrides.

User mistakes end with a one-line ``error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import options as schema
from .distributed import is_main_process, leave
from .errors import TransferKitError, one_line
from .tasks import get_task

app = typer.Typer(
    name="transferkit", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Adapt a pre-trained vision or language model to your images or texts: train, evaluate, predict — "
         "classification, or segmentation (--task segmentation). Offline built-ins: efficientnet_lite0/2 and "
         "minilm-l6 weights; builtin:fashion-mnist / lfw-faces / digits / fashion-mnist-m / font-digits / bbc-news / "
         "fashion-scenes data.")
console = Console(stderr=True)
out = Console()


# --- commands generated from the schema ------------------------------------------------------------


def command(name: str, *sections: type | tuple[type, Iterable[str]]) -> Callable[[Callable], Callable]:
    """Register ``fn(**values)`` as command ``name`` with one option per field of ``sections``; a section may come
    as ``(section, names to leave out)``, and a later section's field wins over an earlier one of the same name.
    ``fn`` receives every value, ``None`` for options not given."""

    def register(fn: Callable) -> Callable:
        parameters: dict[str, inspect.Parameter] = {}
        for entry in sections:
            composite, excluded = entry if isinstance(entry, tuple) else (entry, ())
            for section in getattr(composite, "SECTIONS", (composite,)):
                _add_parameters(parameters, section, set(excluded))
        ordered = [p for p in parameters.values() if p.default is inspect.Parameter.empty]
        ordered += [p for p in parameters.values() if p.default is not inspect.Parameter.empty]

        def handler(**values: Any) -> Any:
            return fn(**values)

        handler.__signature__ = inspect.Signature(ordered)  # type: ignore[attr-defined]
        handler.__doc__ = fn.__doc__
        handler.__name__ = fn.__name__
        app.command(name)(handler)
        return fn

    return register


def _add_parameters(parameters: dict[str, inspect.Parameter], section: type, excluded: set[str]) -> None:
    hints = schema.type_hints(section)
    for f in dataclasses.fields(section):
        spec = schema.spec_of(f)
        if spec.cli and f.name not in excluded:
            parameters[f.name] = _parameter(f, spec, hints[f.name], section.PANEL)


def _parameter(f: dataclasses.Field, spec: schema.Spec, hint: Any, panel: str) -> inspect.Parameter:
    base = spec.cli_type or _without_none(hint)
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    help_text = spec.help if required else f"{spec.help} \\[default: {_default_text(f, spec)}]"
    if spec.argument:
        info: Any = typer.Argument(help=help_text, show_default=False)
    else:
        info = typer.Option(*spec.flags, help=help_text, show_default=False, rich_help_panel=panel,
                            metavar=spec.metavar)
    annotation = Annotated[base if spec.argument and required else base | None, info]
    default = inspect.Parameter.empty if spec.argument and required else None
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def _without_none(hint: Any) -> Any:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _default_text(f: dataclasses.Field, spec: schema.Spec) -> str:
    if spec.default_text is not None:
        return spec.default_text
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    return "none" if f.default in (None, "") else str(f.default)


def _given(values: dict[str, Any], section: type) -> dict[str, Any]:
    """The values of ``section``'s fields that were given on the command line."""
    names = {f.name for f in dataclasses.fields(section)}
    return {k: v for k, v in values.items() if k in names and v is not None}


def _flag(values: dict[str, Any], name: str) -> bool:
    return bool(values.get(name))


def _settings(values: dict[str, Any], section: type) -> dict[str, Any]:
    """Every field of ``section``: the given value, else the schema's default; checked, and required ones present."""
    settings = {}
    for f in dataclasses.fields(section):
        value = values.get(f.name)
        if value is None and f.default is dataclasses.MISSING:
            raise TransferKitError(f"Missing --{f.name.replace('_', '-')}. Fix: pass it (see --help).")
        settings[f.name] = value if value is not None else f.default
    schema.check_values(settings, section)
    return settings


# --- train, plan ---------------------------------------------------------------------------------------


@command("train", schema.TrainConfig, schema.RunControlOptions)
def train(**values: Any) -> None:
    """Fine-tune a pre-trained model on your images or texts (or images with masks: segmentation) and write a run
    folder."""
    from . import api

    quiet = _flag(values, "quiet")
    _setup_logging(quiet)
    given, recipe, resume = _given(values, schema.TrainConfig), values.get("config"), values.get("resume")
    if values.get("dry_run"):
        given.pop("out", None)
        plan_text = str(api.plan(given.pop("data", None), config=recipe, **given))
        if is_main_process():
            print(plan_text)
        return
    try:
        result = api.train(given.pop("data", None), resume=resume, config=recipe, progress=not quiet,
                           **({} if resume is not None else given))
    except KeyboardInterrupt:
        run = resume or given.get("out")
        console.print(f"[yellow]Interrupted.[/] Continue with: transferkit train --resume {run}" if run else
                      "[yellow]Interrupted.[/] Continue with --resume <run folder> (see the runs/ folder).")
        raise typer.Exit(130) from None
    leave()  # the distributed job's process group, if this command joined one
    if not is_main_process():  # one report per job: the process that wrote the run folder prints it
        return
    table = Table(title=f"transferkit: {result.run_dir}", show_header=False)
    table.add_row("data", result.data_description)
    table.add_row("best epoch", f"{result.best_epoch} of {len(result.history)}")
    task = get_task(result.task)
    main, second = task.headline
    table.add_row(f"val {task.label(main)}", f"{result.val_score:.4f}")
    if result.test:
        table.add_row(f"test {task.label(main)}", f"{result.test[main]:.4f} ({task.label(second)} "
                                                  f"{result.test[second]:.4f}, n = {result.test['n']})")
    table.add_row("wall time", f"{result.seconds:.1f} s")
    out.print(table)
    out.print(f"Next: transferkit evaluate {result.run_dir} --data <labelled folder>   |   "
              f"transferkit predict {result.run_dir} <images or folders>")


@command("plan", (schema.TrainConfig, ("out", "overwrite")), schema.PlanOptions,
         (schema.RunControlOptions, ("resume", "dry_run", "quiet")))
def plan(**values: Any) -> None:
    """Print what training would do — layer groups, phases, LR per group, BatchNorm policy — without training."""
    from . import api

    _setup_logging(quiet=True)
    given = _given(values, schema.TrainConfig)
    result = api.plan(given.pop("data", None), num_classes=values.get("num_classes") or 10,
                      config=values.get("config"), processes=values.get("processes"), **given)
    print(json.dumps(result.to_dict()) if _flag(values, "as_json") else result)


# --- evaluate, predict, models, demo -------------------------------------------------------------------


@command("evaluate", schema.EvaluateOptions)
def evaluate(**values: Any) -> None:
    """Accuracy, macro-F1, per-class precision/recall and a confusion matrix of a run on labelled data (segmentation:
    mIoU, per-class IoU and Dice, pixel accuracy, and example overlays)."""
    from .evaluate import format_report, save_confusion_png
    from .predict import load

    schema.check_values(values, schema.EvaluateOptions)
    run, data, as_json = values["run"], values.get("data"), _flag(values, "as_json")
    _setup_logging(quiet=as_json)
    model = load(run, tta=values.get("tta"))
    if model.task.dense:
        _evaluate_dense(model, run, data, values, as_json)
        return
    metrics = model.evaluate(data, batch_size=values.get("batch_size") or 64,
                             skip_bad_images=_flag(values, "skip_bad_images"))
    png = values.get("png")
    png_path = save_confusion_png(metrics, Path(png) if png else Path(run) / "confusion_matrix.png")
    if metrics["seen_in_training"]:
        console.print(f"[bold yellow]warning:[/] this is the {metrics['split']} split of the run's own training "
                      "data: the run saw it (validation chose the best epoch), so the score is optimistic. Pass "
                      "--data with held-out examples.", highlight=False, soft_wrap=True)
    if as_json:
        retention = _retention(model, values) if values.get("retention") is not False else None
        print(json.dumps({**metrics, "run": str(run), "confusion_matrix_png": str(png_path),
                          **({"retention": retention} if retention is not None else {})}))
        return
    out.print(f"[bold]{run}[/] on the {metrics['split']} split of {escape(metrics['data'])}")
    print(format_report(metrics))
    out.print(f"confusion matrix image: {png_path}")


def _evaluate_dense(model: Any, run: str, data: str | None, values: dict[str, Any], as_json: bool) -> None:
    """A dense task's metrics (the split rule of classification's), with its table and examples written to
    ``--png`` (default RUN/evaluation)."""
    found = model.eval_data(data)
    metrics = model.evaluate(found, batch_size=values.get("batch_size") or 16)
    folder = Path(values.get("png") or Path(run) / "evaluation")
    written = model.task.write_evaluation(model.model, found.samples, metrics, folder)
    if metrics["seen_in_training"]:
        console.print(f"[bold yellow]warning:[/] this is the {metrics['split']} split of the run's own training "
                      "data: the run saw it (validation chose the best epoch), so the score is optimistic. Pass "
                      "--data with held-out examples.", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps({**metrics, "run": str(run), "files": [str(p) for p in written]}))
        return
    out.print(f"[bold]{run}[/] on the {metrics['split']} split of {escape(metrics['data'])}")
    print(model.task.format_report(metrics))
    out.print(f"written: {', '.join(str(p) for p in written)}")


def _retention(model: Any, values: dict[str, Any]) -> dict[str, Any] | None:
    """The run's retention of its pre-trained model for ``evaluate --json``; ``{"error": ...}`` when it cannot be
    measured (a scratch run, weights that cannot be loaded offline)."""
    from .adaptation.forgetting import measure_run

    try:
        return measure_run(model, values.get("reference")).to_dict()
    except TransferKitError as exc:
        return {"error": str(exc)}


@command("forgetting", schema.ForgettingOptions)
def forgetting(**values: Any) -> None:
    """How far a fine-tuned run moved from its pre-trained model: top-1 agreement and KL under the original
    classifier on natural images (sentence-embedding cosine for language models), linear CKA per layer group,
    relative weight change per group."""
    from .adaptation.forgetting import backward_transfer, format_retention, measure_run

    settings = _settings(values, schema.ForgettingOptions)
    _setup_logging(quiet=True)
    result = measure_run(settings["run"], settings["reference"], batch_size=settings["batch_size"])
    sequence = (backward_transfer(settings["run"], settings["previous"], batch_size=settings["batch_size"])
                if settings["previous"] else None)
    if settings["as_json"]:
        print(json.dumps({"run": settings["run"], **result.to_dict(),
                          **({"task_sequence": sequence} if sequence else {})}))
        return
    out.print(f"[bold]{escape(settings['run'])}[/] against its pre-trained model")
    print(format_retention(result))
    if sequence:
        print(f"task A ({sequence['previous']}, {sequence['split']} split of {sequence['data']}): accuracy "
              f"{sequence['accuracy_before']:.4f} before, {sequence['accuracy_after']:.4f} with this run's backbone "
              f"under A's head: backward transfer {sequence['backward_transfer']:+.4f}")


@command("interpolate", schema.InterpolateOptions)
def interpolate(**values: Any) -> None:
    """WiSE-FT: interpolate a run's weights towards its pre-trained backbone + linear-probe head, choose alpha on
    validation data, and write the result as a new run folder (with the sweep and an accuracy-vs-retention plot)."""
    from .adaptation.interpolate import interpolate as run_interpolate

    settings = _settings(values, schema.InterpolateOptions)
    as_json = settings.pop("as_json")
    _setup_logging(quiet=as_json)
    record = run_interpolate(settings.pop("run"), progress=not as_json, **settings)
    if as_json:
        print(json.dumps(record))
        return
    table = Table(title=f"WiSE-FT: {record['source_run']} -> {record['out']}")
    for column in ("alpha", "val accuracy", "test accuracy (not used)", "retention", "KL"):
        table.add_column(column)
    for point in record["sweep"]:
        retention = point["top1_agreement"] if point["top1_agreement"] is not None else point["embedding_cosine"]
        mark = " *" if point["alpha"] == record["alpha"] else ""
        table.add_row(f"{point['alpha']:g}{mark}", f"{point['val_accuracy']:.4f}",
                      "-" if point["test_accuracy"] is None else f"{point['test_accuracy']:.4f}",
                      "-" if retention is None else f"{retention:.3f}",
                      "-" if point["kl"] is None else f"{point['kl']:.3f}")
    out.print(table)
    test = record.get("test")
    out.print(f"chosen alpha {record['alpha']:g} on {record['chosen_on']}"
              + (f"; test accuracy {test['accuracy']:.4f}" if test else "")
              + (f"; plot: {record['plot']}" if record.get("plot") else ""))


@command("predict", schema.PredictOptions)
def predict(**values: Any) -> None:
    """Top-k labels with probabilities for images and folders (or texts); segmentation: class-index masks and colour
    overlays; detection: boxes as JSON and drawn on the images."""
    from .predict import load

    schema.check_values(values, schema.PredictOptions)
    _setup_logging(quiet=True)
    run, file = values["run"], values.get("file")
    model = load(run, tta=values.get("tta"))
    items = list(values.get("inputs") or [])
    if file is not None:
        from .data.text import read_lines

        if not Path(file).is_file():
            raise TransferKitError(f"File not found: {file}. Fix: pass --file with one text per line.")
        items += read_lines(file)
    if not items:
        raise TransferKitError("Nothing to predict on. Fix: pass images or folders (for a language model: texts, or "
                               "--file FILE).")
    dense_options = {k: values[k] for k in ("score_threshold", "nms_threshold") if values.get(k) is not None}
    if dense_options and model.task.name != "detection":
        raise TransferKitError(f"--{next(iter(dense_options)).replace('_', '-')} is for detection runs; {run} is a "
                               f"{model.task.name} run. Fix: drop it.")
    predictions = model.predict(items, top_k=values.get("top_k") or 3, batch_size=values.get("batch_size") or 64,
                                **dense_options)
    if model.task.dense:
        from .predict import expand_inputs

        folder = Path(values.get("out") or Path(run) / "predictions")
        written = model.task.write_predictions(predictions, expand_inputs(items), folder)
        if _flag(values, "as_json"):
            print(json.dumps({"run": run, "out": str(folder), "predictions": written}))
            return
        for row in written:
            print(model.task.prediction_line(row))
        return
    if _flag(values, "as_json"):
        print(json.dumps({"run": run, "predictions": [p.to_dict() for p in predictions]}))
        return
    for p in predictions:
        ranked = "  ".join(f"{label} {prob:.3f}" for label, prob in p.top_k)
        print(f"{p.source}\t{ranked}")


@command("models", schema.ModelsOptions)
def models(**values: Any) -> None:
    """List the model sources and the built-in offline weights."""
    from .models.sources import list_sources

    sources = list_sources()
    if _flag(values, "as_json"):
        print(json.dumps(sources))
        return
    table = Table(title="Built-in models (weights ship in pip packages; work offline)")
    for column in ("name", "model", "pip package"):
        table.add_column(column, no_wrap=column == "name")
    for name, entry in {**sources["builtin"], **sources["builtin_text"]}.items():
        table.add_row(name, entry["description"], entry["package"])
    out.print(table)
    for name, entry in {**sources["builtin"], **sources["builtin_text"]}.items():
        out.print(f"  {name}: {entry['preprocessing']}", highlight=False)
    schemes = Table(title="Other sources (pre-trained weights need the internet, or --weights FILE)")
    schemes.add_column("source")
    schemes.add_column("what")
    for key, text in sources["schemes"].items():
        schemes.add_row(key, text)
    out.print(schemes)


@command("demo", schema.DemoOptions)
def demo(**values: Any) -> None:
    """Offline demo: from scratch vs linear probe vs two-stage on Fashion-MNIST with EfficientNet-Lite0."""
    from .demo import run_demo

    settings = _settings(values, schema.DemoOptions)
    _setup_logging(quiet=False)
    rows = run_demo(Path(settings["out"]), per_class=settings["per_class"], image_size=settings["image_size"],
                    epochs=settings["epochs"])
    table = Table(title=f"What transfer buys: Fashion-MNIST, {settings['per_class']} images per class, "
                        f"EfficientNet-Lite0 @ {settings['image_size']} px, CPU")
    for column in ("strategy", "test accuracy", "macro-F1", "wall time", "run folder"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["strategy"], f"{row['test_accuracy']:.3f}", f"{row['macro_f1']:.3f}",
                      f"{row['seconds']:.0f} s", row["run"])
    out.print(table)


# --- compare, advise -----------------------------------------------------------------------------------


@command("compare", (schema.TrainConfig, schema.COMPARE_OWNS), schema.CompareOptions)
def compare(**values: Any) -> None:
    """Compare strategies across training-set sizes and seeds: accuracy, time, convergence, data efficiency.
    Needs data with a held-out test split (a folder with train/ and test/, a CSV with a split column, a text folder
    with a test file, or builtin:NAME): every run is tested on it."""
    from .experiments.compare import compare as run_compare

    _setup_logging(quiet=False)
    grid = _settings(values, schema.CompareOptions)
    train_options = {k: v for k, v in _given(values, schema.TrainConfig).items() if k not in schema.COMPARE_OWNS}
    data = train_options.pop("data", None)
    if data is None:
        raise TransferKitError("Missing --data. Fix: pass --data with a held-out test split, e.g. "
                               "builtin:fashion-mnist.")
    report = run_compare(data, strategies=[s.strip() for s in grid["strategies"].split(",") if s.strip()],
                         per_class=_int_list("per_class", grid["per_class"]), seeds=grid["seeds"],
                         scratch_per_class=_int_list("scratch_per_class", grid["scratch_per_class"]),
                         out=grid["out"], recipes=grid["recipes"], tune=grid["tune"],
                         adapt=[m.strip() for m in grid["adapt"].split(",") if m.strip()],
                         retention=grid["retention"], **train_options)
    leave()
    if not is_main_process():
        return
    print((Path(report["out"]) / "summary.md").read_text(encoding="utf-8"))
    print(f"report: {Path(report['out']) / 'report.html'}")


@command("advise", (schema.TrainConfig, [n for n in schema.train_option_names() if n not in schema.ADVISE_USES]),
         schema.AdviseOptions)
def advise(**values: Any) -> None:
    """Measure the data against the model (counts, sizes, a quick linear probe and nearest-neighbour accuracy on
    frozen features, how far the data is from the pre-training) and recommend a strategy, with the reasons."""
    from .experiments.advise import advise as run_advise

    _setup_logging(quiet=True)
    given = _given(values, schema.TrainConfig)
    schema.check_values(given, schema.TrainConfig)
    data, model = given.pop("data", None), given.pop("model", schema.TrainConfig.model)
    if data is None:
        raise TransferKitError("Missing --data. Fix: pass --data FOLDER, a CSV manifest or builtin:NAME.")
    advice = run_advise(data, model, progress=True, **given)
    fixed = {k: given.get(k) for k in ("per_class", "weights", "text_column", "label_column")}
    command_line = advice.command(data, model, **fixed)
    if _flag(values, "as_json"):
        print(json.dumps({"strategy": advice.strategy, "options": advice.options, "reasons": advice.reasons,
                          "warnings": advice.warnings, "measurements": advice.measurements,
                          "command": command_line}))
        return
    m = advice.measurements
    if m.get("task") == "segmentation":
        domain = ("not measurable" if m["domain_distance"] is None else
                  f"{m['domain_measure']} {m['domain_distance']:.2f} ({'far' if m['far'] else 'close'})")
        print(f"Measured: {m['images']} images, {m['classes']} classes, median side {m['median_size']:.0f} px (model "
              f"input {m['model_input']}), background {m['background_share']:.0%} of the labelled pixels, rarest "
              f"class {m['rarest_class']} {m['rarest_share']:.2%}; domain: {domain}")
    else:
        _print_classification_measurements(m)
    print(f"Recommended: {advice.strategy}")
    for reason in advice.reasons:
        print(f"  - {reason}")
    for warning in advice.warnings:
        print(f"  ! {warning}")
    print(f"Run: {command_line}")


def _print_classification_measurements(m: dict[str, Any]) -> None:
    from .experiments.domain import FAR

    size = f"{m['median_size']:.0f} {'tokens' if m['modality'] == 'text' else 'px'}"
    domain = ("not measurable (the model stores no feature statistics)" if m["domain_distance"] is None else
              f"{m['domain_measure']} {m['domain_distance']:.2f} ({'far' if m['far'] else 'close'}; over "
              f"{FAR[m['domain_measure']]} counts as far)")
    print(f"Measured: {m['samples']} samples, {m['classes']} classes ({m['min_per_class']}-{m['max_per_class']} per "
          f"class in training), median size {size} (model input {m['model_input']}), linear probe "
          f"{m['probe_accuracy']:.3f}, 1-NN {m['knn_accuracy']:.3f}; domain: {domain}")


# --- helpers ---------------------------------------------------------------------------------------


@command("export", schema.ExportOptions)
def export(**values: Any) -> None:
    """Export a run (ONNX, torch.export or a Hugging Face folder), verified against the PyTorch model."""
    from .export import export as run_export

    settings = _settings(values, schema.ExportOptions)
    _setup_logging(quiet=True)
    result = run_export(settings["run"], settings["format"], settings["out"],
                        include_preprocessing=settings["include_preprocessing"], opset=settings["opset"],
                        tolerance=settings["tolerance"], overwrite=settings["overwrite"])
    check = result.verification
    print(f"exported: {result.path}")
    print(f"sidecar: {result.sidecar}")
    print(f"verified: max probability difference {check['max_abs_diff_probabilities']:.1e} (tolerance "
          f"{check['tolerance']:.0e}) on {check['samples']} samples, top-1 agreement {check['top1_agreement']:.0%}")


@command("serve", schema.ServeOptions)
def serve(**values: Any) -> None:
    """Serve predictions over HTTP: POST /predict, GET /health, GET /info."""
    from .serve import ServeConfig
    from .serve import serve as run_serve

    settings = _settings(values, schema.ServeOptions)
    _setup_logging(quiet=False)
    config = ServeConfig(max_batch_size=settings["max_batch_size"], max_wait_ms=settings["max_wait_ms"],
                         max_queue=settings["max_queue"],
                         max_request_bytes=int(settings["max_request_mb"] * 1024 * 1024),
                         max_inputs=settings["max_inputs"], max_image_pixels=settings["max_image_pixels"],
                         timeout_s=settings["timeout"], top_k=settings["top_k"], api_key=settings["api_key"])
    run_serve(settings["source"], host=settings["host"], port=settings["port"], config=config,
              threads=settings["threads"])


def _int_list(name: str, text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise TransferKitError(f"The '{name}' parameter must be comma-separated integers, e.g. 10,30,100. Got "
                               f"{text!r} instead.") from exc


def _setup_logging(quiet: bool) -> None:
    package = logging.getLogger("transferkit")
    if not package.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        package.addHandler(handler)
    package.setLevel(logging.WARNING if quiet or not is_main_process() else logging.INFO)  # one voice per job


def main(argv: list[str] | None = None) -> Any:
    """Entry point: runs the app and turns user errors into one line and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return app(args=argv, prog_name="transferkit")
    except TransferKitError as exc:
        console.print(f"[bold red]error:[/] {escape(one_line(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
