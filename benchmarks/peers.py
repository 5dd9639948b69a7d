"""Peers in one run (issue 16, part 5): transferkit next to the tools a user would otherwise reach for, on the same
train and test samples, on the same machine, in one invocation.

    python benchmarks/peers.py                                # Fashion-MNIST 100/class and BBC News 20/class
    python benchmarks/peers.py --datasets bbc-news --hf-epochs 5
    python benchmarks/peers.py --smoke                        # tiny sizes: checks that every runner works

Runners per dataset (each timed from its call to its test accuracy: data, model, caches, training and the test
evaluation all count):

- ``transferkit defaults``: ``transferkit.train(data, model=..., per_class=..., seed=...)``, as
  ``accuracy_per_second.py`` runs it: ``--strategy auto`` (the measurement, then the advised strategy and options; the
  row's settings name the strategy it chose). Every ratio in the table is against this row.
- ``transferkit linear-probe``: the same with ``strategy="linear-probe"``.
- ``transferkit two-stage``: the same with ``strategy="two-stage"``, the fixed recipe that was the default before auto.
- ``transferkit --budget 60``: the defaults with ``budget=60`` (``--budget 0`` leaves the row out).
- ``sklearn logreg``: scikit-learn ``LogisticRegression`` (after ``StandardScaler``) on the backbone's pooled features
  of the same train and test samples (transferkit's feature extractor, evaluation transform, no augmentation).
- images: ``timm fine-tune``, a plain PyTorch loop: timm's ``tf_efficientnet_lite0`` with the packaged ImageNet weights
  loaded as transferkit loads them, a new classifier, timm's own train/eval transforms from the weights' pretrained
  config (normalisation, interpolation, crop), AdamW, cosine LR per step, the final weights scored.
- images: ``fastai fine_tune``, ``vision_learner(dls, arch).fine_tune(epochs)`` on the same weights, where fastai
  imports (otherwise a row saying how to install it).
- texts: ``HF Trainer``, Hugging Face ``Trainer`` fine-tuning the same MiniLM weights with
  ``AutoModelForSequenceClassification`` and ``TrainingArguments``' defaults (lr 5e-5, linear decay, batch 8, 3
  epochs).

Every runner gets its splits from transferkit's own loader (``prepare.load_data`` with the run's data, model,
per_class and seed) and its test samples from the same test split (``--test-per-class N``: the same N per class
transferkit's ``test_per_class`` takes), so all rows score the same test samples; ``test_n`` shows it. The peers train
on the training split; transferkit also uses its validation split (model selection, early stopping), and so does
fastai (its ``valid`` set). Every runner runs with transferkit's ``--cpu-allocator`` settings (process-wide, applied
before the first runner; a plain loop gets the same by preloading jemalloc or tcmalloc), so the rows differ by their
recipes, not by malloc. Timed results mean something only on a quiet machine; the JSON keeps the machine.
"""

from __future__ import annotations

import importlib
import logging
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import parser, report, timed  # noqa: E402

import transferkit  # noqa: E402
from transferkit import prepare  # noqa: E402
from transferkit.allocator import keep_freed_memory  # noqa: E402
from transferkit.data.splits import take_per_class  # noqa: E402
from transferkit.options import TrainConfig  # noqa: E402

logger = logging.getLogger("benchmarks.peers")

DATASETS = {"fashion-mnist": ("builtin:fashion-mnist", "efficientnet_lite0", 100),
            "bbc-news": ("builtin:bbc-news", "minilm-l6", 20)}
SMOKE = {"per_class": 2, "test_per_class": 2, "image_size": 64, "max_length": 64, "epochs": 1}
REFERENCE = "transferkit defaults"
COLUMNS = ["dataset", "runner", "test_accuracy", "test_n", "seconds", "acc_diff", "time_ratio", "settings"]


@dataclass
class Setup:
    """What every runner of one dataset shares: the data, the model and how the splits are drawn."""

    name: str
    data: str
    model: str
    per_class: int
    seed: int
    image_size: int | None
    max_length: int | None
    test_per_class: int | None
    device: torch.device
    tmp: Path

    def options(self) -> dict[str, Any]:
        """transferkit options that shape the data and the inputs (the same for every runner)."""
        found = {"model": self.model, "per_class": self.per_class, "seed": self.seed,
                 "test_per_class": self.test_per_class}
        if self.image_size is not None and self.model in ("efficientnet_lite0", "efficientnet_lite2"):
            found["image_size"] = self.image_size
        if self.max_length is not None and self.model == "minilm-l6":
            found["max_length"] = self.max_length
        return {k: v for k, v in found.items() if v is not None}

    def config(self) -> TrainConfig:
        return TrainConfig.from_options({"data": self.data, **self.options()})

    def splits(self):
        """(train, val, test, classes): transferkit's own split of the run, the test split cut as its evaluation
        cuts it (``test_per_class``)."""
        split = prepare.load_data(self.config())
        test = split.test
        if self.test_per_class is not None:
            test, _ = take_per_class(test, self.test_per_class, seed=0)  # as transferkit.api._score does
        return split.train, split.val, test, split.classes


# --- transferkit ---------------------------------------------------------------------------------------------------


def run_transferkit(setup: Setup, label: str, epochs: int | None, **options: Any) -> tuple[float, int, str]:
    call = {**setup.options(), "out": str(setup.tmp / f"{setup.name}-{label}"), "progress": False,
            **({"epochs": epochs} if epochs else {}), **options}
    result = transferkit.train(setup.data, **call)
    info = result.model.info
    return result.test["accuracy"], result.test["n"], f"strategy {info.get('strategy')}" + (
        f", epochs {epochs}" if epochs else "")


# --- scikit-learn on the frozen features ---------------------------------------------------------------------------


def run_logreg(setup: Setup, c: float, max_iter: int) -> tuple[float, int, str]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transferkit.data.images import build_transforms
    from transferkit.features import extract_features

    train, _, test, classes = setup.splits()
    model = prepare.load_run_model(setup.config(), len(classes), pretrained=True).to(setup.device)
    transform = None if model.is_text else build_transforms(model.preprocessing, "none")[1]
    x_train, x_test = (extract_features(model, samples, transform, batch_size=64, device=setup.device,
                                        progress=False)[0].astype(np.float32) for samples in (train, test))
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    classifier.fit(x_train, np.asarray(train.labels))
    accuracy = float((classifier.predict(x_test) == np.asarray(test.labels)).mean())
    return accuracy, len(test), f"StandardScaler + LogisticRegression(C={c:g}, max_iter={max_iter}), " \
                                f"{x_train.shape[1]} features"


# --- a plain PyTorch / timm fine-tuning loop -----------------------------------------------------------------------


class _Images(torch.utils.data.Dataset):
    """(image tensor, label) through a torchvision/timm transform; images read as RGB (arrays or files)."""

    def __init__(self, samples: Any, transform: Callable) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from transferkit.data.images import open_image

        return self.transform(open_image(self.samples.items[index])), self.samples.labels[index]


def packaged_timm_model(name: str) -> torch.nn.Module:
    """timm's architecture of a built-in model with the packaged ImageNet weights, loaded as transferkit loads them
    (1000-class head)."""
    import timm

    from transferkit.models.packaged import BUILTIN_MODELS, load_packaged_weights

    builtin = BUILTIN_MODELS[name]
    model = timm.create_model(builtin.timm_arch, pretrained=False, num_classes=1000)
    load_packaged_weights(builtin, model)
    return model


def timm_data_config(model: torch.nn.Module, image_size: int | None) -> dict[str, Any]:
    """timm's data config from the weights' pretrained config (``--image-size`` overrides the size only)."""
    import timm.data

    config = timm.data.resolve_model_data_config(model)
    if image_size is not None:
        config["input_size"] = (3, image_size, image_size)
    return config


def run_timm(setup: Setup, epochs: int, lr: float, batch_size: int, weight_decay: float) -> tuple[float, int, str]:
    import timm.data

    train, _, test, classes = setup.splits()
    torch.manual_seed(setup.seed)
    model = packaged_timm_model(setup.model)
    model.reset_classifier(len(classes))
    config = timm_data_config(model, setup.image_size)
    workers = prepare.default_workers()
    train_loader = torch.utils.data.DataLoader(
        _Images(train, timm.data.create_transform(**config, is_training=True)), batch_size=batch_size, shuffle=True,
        drop_last=len(train) > batch_size, num_workers=workers)
    test_loader = torch.utils.data.DataLoader(_Images(test, timm.data.create_transform(**config)),
                                              batch_size=max(64, batch_size), num_workers=workers)
    device = setup.device
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train_loader))
    loss_fn = torch.nn.CrossEntropyLoss()
    autocast = {"device_type": device.type, "dtype": torch.bfloat16, "enabled": device.type == "cuda"}
    for _ in range(epochs):
        model.train()
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            with torch.autocast(**autocast):
                loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    correct = 0
    with torch.no_grad(), torch.autocast(**autocast):
        for images, labels in test_loader:
            correct += int((model(images.to(device)).argmax(1).cpu() == labels).sum())
    size = config["input_size"][-1]
    return correct / len(test), len(test), (f"AdamW lr {lr:g} wd {weight_decay:g}, cosine, {epochs} epoch(s), batch "
                                            f"{batch_size}, {size} px, timm train transform, mean {config['mean']}")


# --- fastai --------------------------------------------------------------------------------------------------------


def run_fastai(setup: Setup, epochs: int, batch_size: int) -> tuple[float, int, str]:
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        ImageBlock,
        IndexSplitter,
        Normalize,
        Resize,
        accuracy,
        aug_transforms,
        vision_learner,
    )

    from transferkit.data.images import open_image

    train, val, test, classes = setup.splits()
    torch.manual_seed(setup.seed)
    pretrained_model = packaged_timm_model(setup.model)
    config = timm_data_config(pretrained_model, setup.image_size)
    size = config["input_size"][-1]
    # items are indices into every sample (fastai's transforms map over tuples, so a sample cannot be one)
    items, labels = train.items + val.items + test.items, train.labels + val.labels + test.labels
    seen = len(train) + len(val)
    block = DataBlock(blocks=(ImageBlock, CategoryBlock(vocab=classes)),
                      get_x=lambda i: np.asarray(open_image(items[i])), get_y=lambda i: classes[labels[i]],
                      splitter=IndexSplitter(list(range(len(train), seen))), item_tfms=Resize(size),
                      batch_tfms=[*aug_transforms(), Normalize.from_stats(config["mean"], config["std"])])
    dls = block.dataloaders(list(range(seen)), bs=batch_size, device=setup.device)

    def arch(pretrained: bool = True) -> torch.nn.Module:  # fastai keeps the children before the pooling layer
        return pretrained_model

    learn = vision_learner(dls, arch, metrics=accuracy, normalize=False)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(epochs)
        test_dl = dls.test_dl(list(range(seen, len(items))), with_labels=True)
        predictions, targets = learn.get_preds(dl=test_dl)
    correct = int((predictions.argmax(1) == targets).sum())
    return correct / len(test), len(test), f"vision_learner(...).fine_tune({epochs}), batch {batch_size}, {size} px"


# --- Hugging Face Trainer ------------------------------------------------------------------------------------------


class _Encoded(torch.utils.data.Dataset):
    def __init__(self, encodings: dict[str, list], labels: list[int]) -> None:
        self.encodings, self.labels = encodings, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**{k: v[index] for k, v in self.encodings.items()}, "labels": self.labels[index]}


def run_hf_trainer(setup: Setup, epochs: float, lr: float, batch_size: int) -> tuple[float, int, str]:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from transferkit.models.text import BUILTIN_TEXT_MODELS

    train, _, test, classes = setup.splits()
    folder = importlib.import_module(BUILTIN_TEXT_MODELS[setup.model]["module"]).get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the new classifier as missing: expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(classes))
    finally:
        hf_logging.set_verbosity(verbosity)
    truncation = {"max_length": setup.max_length} if setup.max_length else {}

    def encoded(samples: Any) -> _Encoded:
        return _Encoded(dict(tokenizer(list(samples.items), truncation=True, **truncation)), list(samples.labels))

    arguments = TrainingArguments(output_dir=str(setup.tmp / f"{setup.name}-hf"), num_train_epochs=epochs,
                                  learning_rate=lr, per_device_train_batch_size=batch_size, seed=setup.seed,
                                  save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none",
                                  disable_tqdm=True, use_cpu=setup.device.type == "cpu")
    trainer = Trainer(model=model, args=arguments, train_dataset=encoded(train),
                      data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    logits = trainer.predict(encoded(test)).predictions
    accuracy = float((np.asarray(logits).argmax(1) == np.asarray(test.labels)).mean())
    length = setup.max_length or tokenizer.model_max_length
    return accuracy, len(test), (f"TrainingArguments defaults but lr {lr:g}, batch {batch_size}, {epochs:g} epoch(s); "
                                 f"truncation {length} tokens")


# --- the table -----------------------------------------------------------------------------------------------------


def runners(setup: Setup, args: Any) -> dict[str, Callable[[], tuple[float, int, str]]]:
    """The runners of one dataset, by row name, the reference first."""
    epochs = SMOKE["epochs"] if args.smoke else None
    found = {REFERENCE: lambda: run_transferkit(setup, "defaults", epochs),
             "transferkit linear-probe": lambda: run_transferkit(setup, "linear-probe", epochs,
                                                                 strategy="linear-probe"),
             "transferkit two-stage": lambda: run_transferkit(setup, "two-stage", epochs, strategy="two-stage"),
             "sklearn logreg": lambda: run_logreg(setup, args.logreg_c, args.logreg_max_iter)}
    if args.budget:
        found[f"transferkit --budget {args.budget:g}"] = lambda: run_transferkit(setup, "budget", epochs,
                                                                             budget=args.budget)
    if setup.model == "minilm-l6":
        found["HF Trainer"] = lambda: run_hf_trainer(setup, args.hf_epochs, args.hf_lr, args.hf_batch_size)
    else:
        found["timm fine-tune"] = lambda: run_timm(setup, args.timm_epochs, args.timm_lr, args.timm_batch_size,
                                                   args.timm_weight_decay)
        found["fastai fine_tune"] = lambda: run_fastai(setup, args.fastai_epochs, args.fastai_batch_size)
    return found


def fastai_missing() -> str | None:
    """Why the fastai row cannot run (``None`` when fastai imports)."""
    try:
        import fastai.vision.all  # noqa: F401
    except ImportError as exc:
        return f"not installed (pip install fastai): {exc}"
    return None


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads for every runner (restored afterwards) [default: torch's own]")
    p.add_argument("--image-size", type=int, default=None,
                   help="image size for every image runner [default: the weights' (224 px)]")
    p.add_argument("--max-length", type=int, default=None,
                   help="text truncation for every text runner [default: the tokenizer's (512 tokens)]")
    p.add_argument("--test-per-class", type=int, default=None,
                   help="score every runner on N test samples per class [default: the whole test split]")
    p.add_argument("--budget", type=float, default=60.0,
                   help="adds a row of train's defaults with --budget SECONDS (0: no such row) [default: 60, the "
                        "issue's Fashion-MNIST target]")
    p.add_argument("--logreg-c", type=float, default=1.0, help="LogisticRegression C [default: 1.0]")
    p.add_argument("--logreg-max-iter", type=int, default=1000, help="LogisticRegression max_iter [default: 1000]")
    p.add_argument("--timm-epochs", type=int, default=5, help="plain timm loop: epochs [default: 5]")
    p.add_argument("--timm-lr", type=float, default=1e-4, help="plain timm loop: AdamW LR [default: 1e-4]")
    p.add_argument("--timm-batch-size", type=int, default=32, help="plain timm loop: batch size [default: 32]")
    p.add_argument("--timm-weight-decay", type=float, default=0.01,
                   help="plain timm loop: AdamW weight decay [default: 0.01, torch's]")
    p.add_argument("--fastai-epochs", type=int, default=5,
                   help="fastai fine_tune(epochs), after its 1 frozen epoch [default: 5]")
    p.add_argument("--fastai-batch-size", type=int, default=32, help="fastai batch size [default: 32]")
    p.add_argument("--hf-epochs", type=float, default=3.0,
                   help="HF Trainer num_train_epochs [default: 3, TrainingArguments']")
    p.add_argument("--hf-lr", type=float, default=5e-5, help="HF Trainer learning_rate [default: 5e-5, its default]")
    p.add_argument("--hf-batch-size", type=int, default=8,
                   help="HF Trainer per_device_train_batch_size [default: 8, its default]")
    args = p.parse_args(argv)
    if args.smoke:
        args.image_size, args.max_length = SMOKE["image_size"], SMOKE["max_length"]
        args.test_per_class = SMOKE["test_per_class"]
        args.timm_epochs = args.fastai_epochs = SMOKE["epochs"]
        args.hf_epochs = float(SMOKE["epochs"])
    # process-wide and lasting: applied before the first runner, so every row runs with them (see the docstring)
    allocator = keep_freed_memory("auto")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    missing = fastai_missing()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        rows = run_all(args, device, missing)
        notes = (f"acc_diff: test accuracy minus {REFERENCE!r}'s; time_ratio: wall seconds / {REFERENCE!r}'s (each "
                 f"runner timed from its call: data, model, caches, training, test evaluation); device "
                 f"{device.type}, {torch.get_num_threads()} thread(s); every runner with transferkit's CPU "
                 f"allocator settings: {'applied' if allocator else 'not available here'}")
    finally:
        torch.set_num_threads(threads)
    report("peers", rows, COLUMNS, args.out, notes=notes)
    return rows


def run_all(args: Any, device: torch.device, missing: str | None) -> list[dict]:
    """Every runner of every dataset, in order; a peer that fails is a row saying why."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            data, model, per_class = DATASETS[name]
            setup = Setup(name, data, model, SMOKE["per_class"] if args.smoke else per_class, args.seed,
                          args.image_size, args.max_length, args.test_per_class, device, Path(tmp))
            reference = None
            for runner, run in runners(setup, args).items():
                row = {"dataset": f"{name} {setup.per_class}/class", "runner": runner}
                if runner.startswith("fastai") and missing:
                    rows.append({**row, "settings": missing})
                    continue
                try:
                    seconds, (accuracy, n, settings) = timed(run)
                except Exception as exc:  # one peer's failure is a row, not the end of a long benchmark
                    if runner == REFERENCE:
                        raise
                    logger.error("%s on %s failed:\n%s", runner, name, traceback.format_exc())
                    rows.append({**row, "settings": f"failed: {type(exc).__name__}: {exc}"[:200]})
                    continue
                row.update(test_accuracy=accuracy, test_n=n, seconds=seconds, settings=settings)
                reference = reference or row
                row["acc_diff"] = accuracy - reference["test_accuracy"]
                row["time_ratio"] = seconds / reference["seconds"]
                rows.append(row)
    return rows


if __name__ == "__main__":
    main()
