"""The ``transferkit`` command: thin commands, each mapping to one library call.

User mistakes end with a one-line ``error: ...`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import TransferKitError

app = typer.Typer(
    name="transferkit", add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Adapt a pre-trained vision or language model to your images or texts: train, evaluate, predict. "
         "Offline built-ins: efficientnet_lite0/2 and minilm-l6 weights; builtin:fashion-mnist / lfw-faces / "
         "digits / bbc-news data.")
console = Console(stderr=True)
out = Console()

HELP_DATA = ("Training data: a folder with train/ (val/, test/) class sub-folders; a folder of class sub-folders "
             "(split into train/val); a CSV manifest with path,label[,split] columns; or builtin:fashion-mnist, "
             "builtin:lfw-faces, builtin:digits.")
HELP_STRATEGY = ("linear-probe (frozen backbone, head only), fine-tune (all layers, small LR), two-stage (head "
                 "first, then all layers), progressive (head first, then one more group every --unfreeze-every "
                 "epochs, top down), scratch (random weights: the baseline), lora (language models: low-rank "
                 "adapters and the head).")

# Options shared by `train` and `plan` (declared once).
Data = Annotated[str | None, typer.Option(help=HELP_DATA, show_default=False)]
Model = Annotated[str, typer.Option(help="Model source: efficientnet_lite0, efficientnet_lite2, timm:<name>, "
                                         "torchvision:<name>; language models: minilm-l6, hf:<id>, a local Hugging "
                                         "Face folder. See `transferkit models`.")]
Weights = Annotated[str | None, typer.Option(help="Start from a local .safetensors / weights-only .pth file "
                                                  "instead of downloading pre-trained weights.")]
Strategy = Annotated[str, typer.Option(help=HELP_STRATEGY)]
Epochs = Annotated[int | None, typer.Option(help="Epochs of the main phase (two-stage/progressive: once all their "
                                                 "groups train) \\[default: 10 for images, 4 for text].",
                                            show_default=False)]
HeadEpochs = Annotated[int, typer.Option(help="two-stage/progressive: epochs of the head-only stage (2-5 is "
                                              "typical).")]
Lr = Annotated[float | None, typer.Option(help="LR of pre-trained layers \\[default: 1e-4; scratch: 3e-3].",
                                          show_default=False)]
HeadLr = Annotated[float | None, typer.Option(help="LR of the new head \\[default: 1e-3].", show_default=False)]
Lrs = Annotated[str | None, typer.Option(help="Discriminative LRs spread over the layer groups, early layers first; "
                                              "the last value is the head's, e.g. 1e-5,1e-4,1e-3.",
                                         show_default=False)]
LrDecay = Annotated[float | None, typer.Option(help="Layer-wise LR decay: the head gets --head-lr, each group below "
                                                    "the next later group's LR times this factor, e.g. 0.5.",
                                               show_default=False)]
UnfreezeEvery = Annotated[int, typer.Option(help="progressive: epochs between unfreezing one more group.")]
MaxUnfrozen = Annotated[int | None, typer.Option(help="progressive: stop unfreezing when this many groups (head "
                                                      "included) train \\[default: all].", show_default=False)]
Groups = Annotated[int | None, typer.Option(help="Merge neighbouring layer groups so that N remain (head "
                                                 "included) \\[default: the architecture's own groups].",
                                            show_default=False)]
Bn = Annotated[str, typer.Option(help="BatchNorm: auto (freeze statistics of pre-trained layers and for batches "
                                      "under 16; train them from scratch), freeze, train.")]
L2Sp = Annotated[float, typer.Option("--l2-sp", help="L2-SP strength: pull pre-trained weights towards their "
                                                     "starting values (0: off), e.g. 0.01.")]
BatchSize = Annotated[int, typer.Option(help="Images per batch.")]
ImageSize = Annotated[int | None, typer.Option(help="Override the pre-training input size (pixels).",
                                               show_default=False)]
Dropout = Annotated[float | None, typer.Option(help="Dropout before the new head's linear layer \\[default: 0.2 for "
                                                   "images, 0.1 for text].", show_default=False)]
TextColumn = Annotated[str, typer.Option(help="Text: the column holding the text (CSV/TSV/JSONL).")]
LabelColumn = Annotated[str, typer.Option(help="Text: the column holding the label (CSV/TSV/JSONL).")]
MaxLength = Annotated[int | None, typer.Option(help="Text: truncate to this many tokens \\[default: the model's, "
                                                    "at most 512].", show_default=False)]
Pooling = Annotated[str | None, typer.Option(help="Text: cls or mean pooling \\[default: mean for minilm-l6, else "
                                                  "cls].", show_default=False)]
LoraRank = Annotated[int, typer.Option(help="lora: adapter rank.")]
LoraAlpha = Annotated[int, typer.Option(help="lora: adapter scaling alpha.")]
LoraTargets = Annotated[str | None, typer.Option(help="lora: comma-separated module names to adapt \\[default: the "
                                                      "attention query/value projections of the architecture].",
                                                 show_default=False)]
Hidden = Annotated[int, typer.Option(help="Width of an optional hidden layer in the head (0: none).")]
Warmup = Annotated[float, typer.Option(help="Linear LR warm-up, as a fraction of each phase's steps.")]


@app.command()
def train(
    data: Data = None,
    model: Model = "efficientnet_lite0",
    strategy: Strategy = "two-stage",
    out_dir: Annotated[str | None, typer.Option(
        "--out", help="Run folder to create \\[default: runs/<model>-<strategy>-<time>].", show_default=False)] = None,
    weights: Weights = None,
    epochs: Epochs = None,
    head_epochs: HeadEpochs = 3,
    lr: Lr = None,
    head_lr: HeadLr = None,
    lrs: Lrs = None,
    lr_decay: LrDecay = None,
    unfreeze_every: UnfreezeEvery = 1,
    max_unfrozen: MaxUnfrozen = None,
    groups: Groups = None,
    bn: Bn = "auto",
    l2_sp: L2Sp = 0.0,
    text_column: TextColumn = "text",
    label_column: LabelColumn = "label",
    max_length: MaxLength = None,
    pooling: Pooling = None,
    lora_rank: LoraRank = 8,
    lora_alpha: LoraAlpha = 16,
    lora_targets: LoraTargets = None,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow a hub model to run code from its repository "
                                                          "(review it first).")] = False,
    batch_size: BatchSize = 32,
    image_size: ImageSize = None,
    augment: Annotated[str, typer.Option(help="Augmentation: none, light (flip, random resized crop), heavy "
                                              "(plus colour jitter, rotation, RandAugment).")] = "light",
    dropout: Dropout = None,
    hidden: Hidden = 0,
    val_fraction: Annotated[float, typer.Option(help="Share of each class held out for validation when the "
                                                     "data has no val split.")] = 0.2,
    per_class: Annotated[int | None, typer.Option(help="Use only N training images per class (seeded).",
                                                  show_default=False)] = None,
    test_per_class: Annotated[int | None, typer.Option(help="Evaluate the test split on N images per class.",
                                                       show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed for splits, initialisation and data order.")] = 0,
    patience: Annotated[int, typer.Option(help="Early stopping: epochs without better val accuracy before a "
                                               "phase ends (0: off). The best epoch's weights are kept.")] = 3,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing for the cross-entropy loss.")] = 0.0,
    class_weights: Annotated[str, typer.Option(help="none, or auto (inverse class frequency).")] = "none",
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay (not applied to biases/norms).")] = 0.01,
    warmup: Warmup = 0.1,
    workers: Annotated[int | None, typer.Option(help="DataLoader workers \\[default: sized to the machine].",
                                                show_default=False)] = None,
    skip_bad_images: Annotated[bool, typer.Option(help="Skip (and count) unreadable images instead of "
                                                       "stopping.")] = False,
    mixed_precision: Annotated[str, typer.Option(
        help="auto (bf16/fp16 on GPU, fp32 on CPU), no, fp16, bf16.")] = "auto",
    feature_cache: Annotated[str, typer.Option(
        help="auto: while the backbone is frozen, run it once and train the head on cached float16 features; off: "
             "run it every epoch.")] = "auto",
    cache_dir: Annotated[str | None, typer.Option(help="Where the feature and decoded-input caches live (share it "
                                                       "between runs to reuse them) \\[default: RUN/feature-cache].",
                                                  show_default=False)] = None,
    cache_views: Annotated[int, typer.Option(help="Augmented views per image to cache for head-only phases (0: "
                                                  "un-augmented features).")] = 0,
    head_fit: Annotated[str, typer.Option(help="Head-only phases on cached features: auto (exact L-BFGS logistic fit "
                                               "when the head is linear and features are un-augmented), lbfgs, "
                                               "sgd.")] = "auto",
    decoded_cache: Annotated[str, typer.Option(help="auto: decode and resize each image once, augment the stored "
                                                    "uint8 tensors every epoch; off: decode every epoch.")] = "auto",
    channels_last: Annotated[str, typer.Option(
        help="auto (on for convolutional networks on a GPU), on, off.")] = "auto",
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the model (slow to start; pays "
                                                                  "off on long GPU runs).")] = False,
    cpu: Annotated[bool, typer.Option(help="Train on the CPU even if a GPU is present.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    resume: Annotated[str | None, typer.Option(help="Continue an interrupted run folder from its last "
                                                    "completed epoch (its saved settings are used).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the plan (groups, phases, LRs, BatchNorm) and stop.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or per-epoch lines.")] = False,
) -> None:
    """Fine-tune a pre-trained model on your images or texts and write a run folder."""
    from . import api

    _setup_logging(quiet)
    options = dict(model=model, strategy=strategy, out=out_dir, weights=weights, epochs=epochs,
                   head_epochs=head_epochs, lr=lr, head_lr=head_lr, lrs=lrs, lr_decay=lr_decay,
                   unfreeze_every=unfreeze_every, max_unfrozen=max_unfrozen, groups=groups, bn=bn, l2_sp=l2_sp,
                   text_column=text_column, label_column=label_column, max_length=max_length, pooling=pooling,
                   lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets,
                   trust_remote_code=trust_remote_code, batch_size=batch_size, image_size=image_size,
                   augment=augment, dropout=dropout, hidden=hidden,
                   val_fraction=val_fraction, per_class=per_class, test_per_class=test_per_class, seed=seed,
                   patience=patience, label_smoothing=label_smoothing, class_weights=class_weights,
                   weight_decay=weight_decay, warmup=warmup, workers=workers, skip_bad_images=skip_bad_images,
                   mixed_precision=mixed_precision, feature_cache=feature_cache, cache_dir=cache_dir,
                   cache_views=cache_views, head_fit=head_fit, decoded_cache=decoded_cache, channels_last=channels_last,
                   compile=compile_model, cpu=cpu, overwrite=overwrite)
    if dry_run:
        options.pop("out")
        print(api.plan(data, **options))
        return
    if resume is not None:
        options = {}
    elif data is None:
        raise TransferKitError("Missing --data. Fix: pass --data FOLDER, a CSV manifest or builtin:fashion-mnist "
                               "(or --resume RUN to continue a run).")
    try:
        result = api.train(data, resume=resume, progress=not quiet, **options)
    except KeyboardInterrupt:
        run = resume or out_dir
        console.print(f"[yellow]Interrupted.[/] Continue with: transferkit train --resume {run}" if run else
                      "[yellow]Interrupted.[/] Continue with --resume <run folder> (see the runs/ folder).")
        raise typer.Exit(130) from None
    table = Table(title=f"transferkit: {result.run_dir}", show_header=False)
    table.add_row("data", result.data_description)
    table.add_row("best epoch", f"{result.best_epoch} of {len(result.history)}")
    table.add_row("val accuracy", f"{result.val_accuracy:.4f}")
    if result.test:
        table.add_row("test accuracy", f"{result.test['accuracy']:.4f} (macro-F1 {result.test['macro_f1']:.4f}, "
                                       f"n = {result.test['n']})")
    table.add_row("wall time", f"{result.seconds:.1f} s")
    out.print(table)
    out.print(f"Next: transferkit evaluate {result.run_dir} --data <labelled folder>   |   "
              f"transferkit predict {result.run_dir} <images or folders>")


@app.command()
def plan(
    data: Data = None,
    num_classes: Annotated[int, typer.Option(help="Classes of the task when --data is not given.")] = 10,
    model: Model = "efficientnet_lite0",
    weights: Weights = None,
    strategy: Strategy = "two-stage",
    epochs: Epochs = None,
    head_epochs: HeadEpochs = 3,
    lr: Lr = None,
    head_lr: HeadLr = None,
    lrs: Lrs = None,
    lr_decay: LrDecay = None,
    unfreeze_every: UnfreezeEvery = 1,
    max_unfrozen: MaxUnfrozen = None,
    groups: Groups = None,
    bn: Bn = "auto",
    batch_size: BatchSize = 32,
    image_size: ImageSize = None,
    dropout: Dropout = None,
    hidden: Hidden = 0,
    max_length: MaxLength = None,
    pooling: Pooling = None,
    warmup: Warmup = 0.1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Print what training would do — layer groups, phases, LR per group, BatchNorm policy — without training."""
    from . import api

    _setup_logging(quiet=True)
    result = api.plan(data, num_classes=num_classes, model=model, weights=weights, strategy=strategy, epochs=epochs,
                      head_epochs=head_epochs, lr=lr, head_lr=head_lr, lrs=lrs, lr_decay=lr_decay,
                      unfreeze_every=unfreeze_every, max_unfrozen=max_unfrozen, groups=groups, bn=bn,
                      batch_size=batch_size, image_size=image_size, dropout=dropout, hidden=hidden,
                      max_length=max_length, pooling=pooling, warmup=warmup)
    print(json.dumps(result.to_dict()) if as_json else result)


@app.command()
def evaluate(
    run: Annotated[str, typer.Argument(help="A finished run folder.")],
    data: Annotated[str | None, typer.Option(help="Labelled images: a folder of class sub-folders (a tree's "
                                                  "test/ is used), a CSV manifest, or builtin:NAME (its test "
                                                  "split) \\[default: the run's own test split].",
                                             show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a report.")] = False,
    png: Annotated[str | None, typer.Option(help="Where to write the confusion-matrix PNG "
                                                 "\\[default: RUN/confusion_matrix.png].", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    skip_bad_images: Annotated[bool, typer.Option(help="Skip unreadable images.")] = False,
) -> None:
    """Accuracy, macro-F1, per-class precision/recall and a confusion matrix of a run on labelled data."""
    from .evaluate import format_report, save_confusion_png
    from .predict import load

    _setup_logging(quiet=as_json)
    model = load(run)
    if data is None:
        data = model.info.get("config", {}).get("data", "")
        if not data.startswith("builtin:") and not (Path(data) / "test").is_dir():
            raise TransferKitError(f"The run's data ({data}) has no test split. Fix: pass --data with labelled "
                                   "images to evaluate on.")
    metrics = model.evaluate(data, batch_size=batch_size, skip_bad_images=skip_bad_images)
    png_path = save_confusion_png(metrics, Path(png) if png else Path(run) / "confusion_matrix.png")
    if as_json:
        print(json.dumps({**metrics, "data": str(data), "run": str(run), "confusion_matrix_png": str(png_path)}))
        return
    out.print(f"[bold]{run}[/] on {data}")
    print(format_report(metrics))
    out.print(f"confusion matrix image: {png_path}")


@app.command()
def predict(
    run: Annotated[str, typer.Argument(help="A finished run folder.")],
    inputs: Annotated[list[str] | None, typer.Argument(help="Image files and/or folders (searched recursively); "
                                                           "for a language model, the texts.",
                                                      show_default=False)] = None,
    file: Annotated[str | None, typer.Option(help="Language models: a file of texts, one per line (or a "
                                                  "CSV/TSV/JSONL with a text column).", show_default=False)] = None,
    top_k: Annotated[int, typer.Option(help="How many labels to show per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
) -> None:
    """Top-k labels with probabilities for images and folders."""
    from .predict import load

    _setup_logging(quiet=True)
    model = load(run)
    items = list(inputs or [])
    if file is not None:
        from .data.text import read_lines

        if not Path(file).is_file():
            raise TransferKitError(f"File not found: {file}. Fix: pass --file with one text per line.")
        items += read_lines(file)
    if not items:
        raise TransferKitError("Nothing to predict on. Fix: pass images or folders (for a language model: texts, or "
                               "--file FILE).")
    predictions = model.predict(items, top_k=top_k, batch_size=batch_size)
    if as_json:
        print(json.dumps({"run": run, "predictions": [p.to_dict() for p in predictions]}))
        return
    for p in predictions:
        ranked = "  ".join(f"{label} {prob:.3f}" for label, prob in p.top_k)
        print(f"{p.source}\t{ranked}")


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False) -> None:
    """List the model sources and the built-in offline weights."""
    from .models.sources import list_sources

    sources = list_sources()
    if as_json:
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


@app.command()
def demo(
    out_dir: Annotated[str, typer.Option("--out", help="Folder for the three demo runs.")] = "runs/demo",
    per_class: Annotated[int, typer.Option(help="Training images per class.")] = 30,
    image_size: Annotated[int, typer.Option(help="Input size in pixels.")] = 96,
    epochs: Annotated[int, typer.Option(help="Epochs per run.")] = 8,
) -> None:
    """Offline demo: from scratch vs linear probe vs two-stage on Fashion-MNIST with EfficientNet-Lite0."""
    from .demo import run_demo

    _setup_logging(quiet=False)
    rows = run_demo(Path(out_dir), per_class=per_class, image_size=image_size, epochs=epochs)
    table = Table(title=f"What transfer buys: Fashion-MNIST, {per_class} images per class, EfficientNet-Lite0 "
                        f"@ {image_size} px, CPU")
    for column in ("strategy", "test accuracy", "macro-F1", "wall time", "run folder"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["strategy"], f"{row['test_accuracy']:.3f}", f"{row['macro_f1']:.3f}",
                      f"{row['seconds']:.0f} s", row["run"])
    out.print(table)


@app.command()
def compare(
    data: Annotated[str, typer.Option(help="Data with a held-out test split (a folder with train/ and test/, a "
                                           "CSV with a split column, a text folder with a test file, or "
                                           "builtin:NAME): every run is tested on it.")],
    model: Model = "efficientnet_lite0",
    weights: Weights = None,
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies.")] = "scratch,linear-probe,two-stage",
    per_class: Annotated[str, typer.Option(help="Comma-separated training examples per class.")] = "10,30,100",
    scratch_per_class: Annotated[str, typer.Option(help="Extra sizes for scratch only (to find how much data it "
                                                        "needs), e.g. 1000.")] = "",
    seeds: Annotated[int, typer.Option(help="Seeds per (strategy, size).")] = 1,
    out_dir: Annotated[str, typer.Option("--out", help="Report folder (results.json, summary.md, report.html, "
                                                       "runs/, cache/); an interrupted grid resumes there.")]
    = "reports/compare",
    epochs: Epochs = None,
    image_size: ImageSize = None,
    max_length: MaxLength = None,
    test_per_class: Annotated[int | None, typer.Option(help="Test on N images per class of the test split.",
                                                       show_default=False)] = None,
    batch_size: BatchSize = 32,
    text_column: TextColumn = "text",
    label_column: LabelColumn = "label",
) -> None:
    """Compare strategies across training-set sizes and seeds: accuracy, time, convergence, data efficiency."""
    from .experiments.compare import compare as run_compare

    _setup_logging(quiet=False)
    sizes = _int_list("per_class", per_class)
    options = {k: v for k, v in dict(weights=weights, epochs=epochs, image_size=image_size, max_length=max_length,
                                     test_per_class=test_per_class, batch_size=batch_size,
                                     text_column=None if text_column == "text" else text_column,
                                     label_column=None if label_column == "label" else label_column).items()
               if v is not None}
    report = run_compare(data, model=model, strategies=[s.strip() for s in strategies.split(",") if s.strip()],
                         per_class=sizes, seeds=seeds, scratch_per_class=_int_list("scratch_per_class",
                                                                                   scratch_per_class),
                         out=out_dir, **options)
    print((Path(report["out"]) / "summary.md").read_text(encoding="utf-8"))
    print(f"report: {Path(report['out']) / 'report.html'}")


@app.command()
def advise(
    data: Annotated[str, typer.Option(help=HELP_DATA)],
    model: Model = "efficientnet_lite0",
    weights: Weights = None,
    per_class: Annotated[int | None, typer.Option(help="Advise for N training examples per class, as `train "
                                                       "--per-class N` would use (what if I had less data?).",
                                                  show_default=False)] = None,
    text_column: TextColumn = "text",
    label_column: LabelColumn = "label",
    seed: Annotated[int, typer.Option(help="Seed for splits and the examples measured.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """Measure the data against the model (counts, sizes, a quick linear probe and nearest-neighbour accuracy on
    frozen features, how far the data is from the pre-training) and recommend a strategy, with the reasons."""
    from .experiments.advise import advise as run_advise
    from .experiments.domain import FAR

    _setup_logging(quiet=True)
    advice = run_advise(data, model, weights=weights, per_class=per_class, seed=seed, progress=True,
                        text_column=text_column, label_column=label_column)
    extra = {"per_class": per_class, "weights": weights,
             "text_column": None if text_column == "text" else text_column,
             "label_column": None if label_column == "label" else label_column}
    command = advice.command(data, model, **extra)
    if as_json:
        print(json.dumps({"strategy": advice.strategy, "options": advice.options, "reasons": advice.reasons,
                          "warnings": advice.warnings, "measurements": advice.measurements, "command": command}))
        return
    m = advice.measurements
    size = f"{m['median_size']:.0f} {'tokens' if m['modality'] == 'text' else 'px'}"
    domain = ("not measurable (the model stores no feature statistics)" if m["domain_distance"] is None else
              f"{m['domain_measure']} {m['domain_distance']:.2f} ({'far' if m['far'] else 'close'}; over "
              f"{FAR[m['domain_measure']]} counts as far)")
    print(f"Measured: {m['samples']} samples, {m['classes']} classes ({m['min_per_class']}-{m['max_per_class']} per "
          f"class in training), median size {size} (model input {m['model_input']}), linear probe "
          f"{m['probe_accuracy']:.3f}, 1-NN {m['knn_accuracy']:.3f}; domain: {domain}")
    print(f"Recommended: {advice.strategy}")
    for reason in advice.reasons:
        print(f"  - {reason}")
    for warning in advice.warnings:
        print(f"  ! {warning}")
    print(f"Run: {command}")


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="A finished run folder.")],
    format: Annotated[str, typer.Option("--format", help="onnx (onnxruntime), pt2 (torch.export program) or hf (a "
                                                          "Hugging Face folder for AutoModelForSequenceClassification; "
                                                          "text runs with cls pooling).")],
    out_path: Annotated[str, typer.Option("--out", help="The output file (onnx, pt2) or folder (hf); a JSON sidecar "
                                                        "with labels, preprocessing and the verification goes beside "
                                                        "it.")],
    include_preprocessing: Annotated[bool, typer.Option(help="Images: the graph takes uint8 NCHW images at the "
                                                             "model's input size and scales and normalises them "
                                                             "itself (resize and crop stay outside).")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    tolerance: Annotated[float, typer.Option(help="Largest difference in class probabilities between the export "
                                                  "and the PyTorch model that the check accepts.")] = 1e-4,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
) -> None:
    """Export a run (ONNX, torch.export or a Hugging Face folder), verified against the PyTorch model."""
    from .export import export as run_export

    _setup_logging(quiet=True)
    result = run_export(run, format, out_path, include_preprocessing=include_preprocessing, opset=opset,
                        tolerance=tolerance, overwrite=overwrite)
    check = result.verification
    print(f"exported: {result.path}")
    print(f"sidecar: {result.sidecar}")
    print(f"verified: max probability difference {check['max_abs_diff_probabilities']:.1e} (tolerance "
          f"{check['tolerance']:.0e}) on {check['samples']} samples, top-1 agreement {check['top1_agreement']:.0%}")


@app.command()
def serve(
    source: Annotated[str, typer.Argument(help="A finished run folder (PyTorch) or an exported .onnx file with its "
                                               "sidecar (onnxruntime).")],
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: all, e.g. in a container).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_batch_size: Annotated[int, typer.Option(help="Dynamic batching: most inputs per model call (1: off).")] = 16,
    max_wait_ms: Annotated[float, typer.Option(help="Dynamic batching: how long a batch waits for more inputs.")]
    = 5.0,
    max_queue: Annotated[int, typer.Option(help="Most inputs waiting for the model; beyond it requests get 503.")]
    = 256,
    max_request_mb: Annotated[float, typer.Option(help="Largest request body in MB (413 beyond).")] = 16.0,
    max_inputs: Annotated[int, typer.Option(help="Most images or texts in one request (413 beyond).")] = 64,
    max_image_pixels: Annotated[int, typer.Option(help="Largest image, width x height (413 beyond: decompression "
                                                       "bombs).")] = 40_000_000,
    timeout: Annotated[float, typer.Option(help="Seconds a request may take (408 reading, 504 predicting).")] = 30.0,
    top_k: Annotated[int, typer.Option(help="Labels per prediction when the request does not say.")] = 3,
    api_key: Annotated[str | None, typer.Option(help="Require this key ('X-API-Key: KEY' or 'Authorization: Bearer "
                                                     "KEY') on /predict and /info \\[default: the "
                                                     "TRANSFERKIT_API_KEY environment variable, else none].",
                                                show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(help="Inference threads \\[default: the runtime's].",
                                                show_default=False)] = None,
) -> None:
    """Serve predictions over HTTP: POST /predict, GET /health, GET /info."""
    from .serve import ServeConfig
    from .serve import serve as run_serve

    _setup_logging(quiet=False)
    config = ServeConfig(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                         max_request_bytes=int(max_request_mb * 1024 * 1024), max_inputs=max_inputs,
                         max_image_pixels=max_image_pixels, timeout_s=timeout, top_k=top_k, api_key=api_key)
    run_serve(source, host=host, port=port, config=config, threads=threads)


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
    package.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: runs the app and turns user errors into one line and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return app(args=argv, prog_name="transferkit")
    except TransferKitError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
