"""WiSE-FT (Wortsman et al. 2022): weight-space interpolation between the start and the fine-tuned model.

``θ(α) = (1 − α)·θ₀ + α·θ₁`` for every floating-point tensor of the state dict (BatchNorm running statistics
included; integer counters are taken from θ₁), with ``torch.lerp`` — exact at α = 0 and α = 1. θ₁ is the
fine-tuned run. θ₀ is the pre-trained backbone with a *trained* head: the linear probe, i.e. the head at the end
of the head-only stage of a two-stage (or progressive) run, which the run folder keeps as
``probe_head.safetensors``. A run without one (fine-tune, L2-SP) gets an exact logistic fit of a linear head on
the pre-trained backbone's features of its training split. (A random head makes WiSE-FT useless: the
interpolated models then predict nothing sensible for small α.)

α is chosen on labelled validation data (highest accuracy; ties go to the smaller α, which keeps more of the
pre-trained model), never on test data. Optionally the BatchNorm statistics of each θ(α) are re-estimated on the
training images (a mixture of two networks' weights does not produce the mixture of their statistics). For each
α the sweep also records the retention of the pre-trained function (:mod:`.forgetting`): the trade-off between
accuracy on the new task and what was forgotten, plotted to ``interpolation.png``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TransferKitError, bad_value
from ..models.model import TransferModel

logger = logging.getLogger(__name__)

DEFAULT_ALPHAS = "0:1:0.1"
BN_BATCHES = 20  # batches of training images used to re-estimate BatchNorm statistics


def parse_alphas(text: str | Sequence[float]) -> list[float]:
    """``0:1:0.1`` (start:stop:step, stop included) or ``0,0.5,1``: sorted, unique, each in [0, 1]."""
    expected = "start:stop:step (e.g. 0:1:0.1) or comma-separated values in [0, 1] (e.g. 0,0.5,1)"
    try:
        if isinstance(text, str) and ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 10) for i in range(count)]
        else:
            values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        raise bad_value("alphas", text, expected) from None
    if not values or any(not 0.0 <= v <= 1.0 for v in values):
        raise bad_value("alphas", text, expected)
    return sorted(set(values))


def interpolate_state(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
                      alpha: float) -> dict[str, torch.Tensor]:
    """``(1 − α)·start + α·end`` per floating-point tensor (``end``'s value for integer ones)."""
    if set(start) != set(end):
        missing = sorted(set(start) ^ set(end))
        raise TransferKitError(f"Cannot interpolate: the two models differ in {len(missing)} tensor(s) (e.g. "
                               f"{missing[0]}). Fix: interpolate a run with its own pre-trained model.")
    return {k: torch.lerp(start[k].to(end[k].dtype), end[k], alpha) if end[k].is_floating_point() else end[k].clone()
            for k in end}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Sequence[Any]) -> None:
    """Re-estimate every BatchNorm layer's running statistics on ``batches`` (a cumulative average over them),
    the rest of the model in eval mode."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not layers:
        return
    model.eval()
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    try:
        for batch in batches:
            model(batch)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.eval()


def start_state(start: TransferModel, probe_head: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """θ₀: the pre-trained model's state with the linear-probe head."""
    state = start.state_dict()
    head = {f"head.{k}": v for k, v in probe_head.items()}
    missing = sorted(set(k for k in state if k.startswith("head.")) - set(head))
    if missing:
        raise TransferKitError(f"The saved linear-probe head does not fit the model's head ({missing[0]} missing). "
                               "Fix: the run folder is inconsistent; retrain it.")
    return {**state, **head}


def fit_probe_head(start: TransferModel, train_batches: Sequence[tuple[Any, torch.Tensor]],
                   val_batches: Sequence[tuple[Any, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A linear probe for a run without one: the exact L2-regularised logistic fit of a linear head on the
    pre-trained backbone's features (L2 chosen on validation)."""
    from ..training.headfit import fit_linear_head

    linear = start.linear_head()
    if linear is None:
        raise TransferKitError("This run has no linear-probe head and its head is not linear (--hidden), so none can "
                               "be fitted. Fix: interpolate a two-stage run (it keeps its head-only stage's head).")
    start.eval()

    @torch.no_grad()
    def features(batches: Sequence[tuple[Any, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*[(start.forward_features(x).float(), y) for x, y in batches], strict=True)
        return torch.cat(xs), torch.cat(ys)

    fit_linear_head(linear, *features(train_batches), *features(val_batches))
    return {k: v.detach().clone() for k, v in start.head.state_dict().items()}


@dataclass
class SweepPoint:
    alpha: float
    val_accuracy: float
    top1_agreement: float | None = None
    kl: float | None = None
    embedding_cosine: float | None = None
    test_accuracy: float | None = None  # reported beside, never used to choose alpha

    @property
    def retention(self) -> float | None:
        return self.top1_agreement if self.top1_agreement is not None else self.embedding_cosine


def sweep(model: TransferModel, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
          alphas: Sequence[float], accuracy: Callable[[TransferModel], float],
          retention: Callable[[TransferModel], Any] | None = None,
          calibrate: Callable[[TransferModel], None] | None = None, progress: bool = True,
          test_accuracy: Callable[[TransferModel], float] | None = None) -> list[SweepPoint]:
    """Load θ(α) into ``model`` for each α (re-estimating BatchNorm statistics with ``calibrate``) and record its
    validation ``accuracy`` and ``retention`` (a :class:`~.forgetting.Retention`) — and ``test_accuracy`` for the
    report, which plays no part in choosing α."""
    points = []
    for alpha in alphas:
        model.load_state_dict(interpolate_state(start, end, alpha))
        if calibrate is not None:
            calibrate(model)
        model.eval()
        point = SweepPoint(alpha, accuracy(model))
        if test_accuracy is not None:
            point.test_accuracy = test_accuracy(model)
        if retention is not None:
            kept = retention(model)
            point.top1_agreement, point.kl, point.embedding_cosine = kept.top1_agreement, kept.kl, \
                kept.embedding_cosine
        if progress:
            logger.info("alpha %.2f: val accuracy %.4f%s", alpha, point.val_accuracy,
                        "" if point.retention is None else f", retention {point.retention:.3f}")
        points.append(point)
    return points


def choose_alpha(points: Sequence[SweepPoint]) -> SweepPoint:
    """The highest validation accuracy; ties go to the smaller α (more of the pre-trained model kept)."""
    return min(points, key=lambda p: (-p.val_accuracy, p.alpha))


def save_plot(points: Sequence[SweepPoint], path: Path, chosen: float, title: str = "") -> Path | None:
    """Validation accuracy against retention, one point per α (labelled), the chosen α circled."""
    if not any(p.retention is not None for p in points):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    xs, ys = [p.retention for p in points], [p.val_accuracy for p in points]
    ax.plot(xs, ys, "o-", color="tab:blue")
    for p in points:
        ax.annotate(f"{p.alpha:g}", (p.retention, p.val_accuracy), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
        if p.alpha == chosen:
            ax.plot([p.retention], [p.val_accuracy], "o", markersize=12, fillstyle="none", color="tab:red")
    metric = "top-1 agreement with the pre-trained classifier" if points[0].top1_agreement is not None else \
        "sentence-embedding cosine with the pre-trained encoder"
    ax.set_xlabel(f"retention: {metric}")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title or "WiSE-FT: accuracy vs retention over alpha", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- a run folder in, a run folder out ------------------------------------------------------------------


def _batches(model: TransferModel, samples: Any, batch_size: int, limit: int | None = None) -> list[Any]:
    """(inputs, labels) batches of ``samples`` through the model's evaluation preprocessing."""
    from .forgetting import reference_batches

    count = len(samples.items) if limit is None else min(len(samples.items), limit * batch_size)
    inputs = reference_batches(model, samples.items[:count], batch_size)
    labels = torch.as_tensor(samples.labels[:count])
    return [(x, labels[i * batch_size:(i + 1) * batch_size]) for i, x in enumerate(inputs)]


def _accuracy(batches: Sequence[tuple[Any, torch.Tensor]]) -> Callable[[TransferModel], float]:
    @torch.no_grad()
    def accuracy(model: TransferModel) -> float:
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
        return hits / max(1, sum(len(y) for _, y in batches))

    return accuracy


def wise_ft(model: TransferModel, start: TransferModel, probe_head: dict[str, torch.Tensor] | None, data: Any,
            *, alphas: Sequence[float], val: Any = None, bn_recalibrate: bool = False,
            reference: str | Path | None = None, info: dict[str, Any] | None = None, batch_size: int = 64,
            progress: bool = True, test: Any = None) -> tuple[list[SweepPoint], SweepPoint, str]:
    """Sweep α between θ₀ (``start``'s backbone + ``probe_head``) and θ₁ (``model``) and leave θ(α*) in ``model``.

    Args:
        data: the run's :class:`~transferkit.data.samples.SplitData` (training images for BatchNorm statistics and
            a missing probe; validation by default).
        val: labelled validation samples to choose α on (default: ``data.val``).
        info: the run's ``transferkit.json`` content (for the retention measures; ``None`` skips them).
        test: labelled test samples whose accuracy is recorded for each α (for the report only).

    Returns:
        The sweep, the chosen point, and where the probe head came from.
    """
    from .forgetting import RetentionProbe, original_classifier, reference_batches
    from .reference import reference_inputs

    end = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = start.cpu().eval()
    model.cpu()
    val_batches = _batches(model, val if val is not None else data.val, batch_size)
    if probe_head is None:
        probe_source = "fitted now: exact logistic fit on the pre-trained features of the training split"
        probe_head = fit_probe_head(start, _batches(model, data.train, batch_size), val_batches)
    else:
        probe_source = "the head at the end of the run's head-only stage"
    theta0 = start_state(start, probe_head)
    probe = None
    if info is not None:
        linear, note = original_classifier(info)
        items, description = reference_inputs(reference, model.is_text)
        probe = RetentionProbe(start, reference_batches(model, items, batch_size), linear, description, note)
    calibrate = None
    if bn_recalibrate and not model.is_text:
        train_inputs = [x for x, _ in _batches(model, data.train, batch_size, limit=BN_BATCHES)]
        calibrate = lambda m: recalibrate_batchnorm(m, train_inputs)  # noqa: E731
    test_accuracy = _accuracy(_batches(model, test, batch_size)) if test is not None and len(test) else None
    points = sweep(model, theta0, end, alphas, _accuracy(val_batches), probe.measure if probe else None, calibrate,
                   progress, test_accuracy)
    chosen = choose_alpha(points)
    model.load_state_dict(interpolate_state(theta0, end, chosen.alpha))
    if calibrate is not None:
        calibrate(model)
    model.eval()
    return points, chosen, probe_source


def sweep_record(points: Sequence[SweepPoint], chosen: SweepPoint, **details: Any) -> dict[str, Any]:
    """What ``interpolation.json`` and ``transferkit.json``'s ``wise_ft`` hold."""
    return {"alpha": chosen.alpha, "val_accuracy": chosen.val_accuracy, "retention": chosen.retention,
            **details, "sweep": [asdict(p) for p in points]}


def interpolate(run: str | Path, *, out: str | Path, alphas: str | Sequence[float] = DEFAULT_ALPHAS,
                data: str | Path | None = None, bn_recalibrate: bool = False, reference: str | Path | None = None,
                batch_size: int = 64, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """WiSE-FT of a finished run into a new run folder ``out`` (see the module docstring).

    Args:
        alphas: the α grid (``0:1:0.1`` or ``0,0.5,1``).
        data: labelled validation examples to choose α on (a folder of class folders, a CSV...); default: the
            run's own validation split.
        bn_recalibrate: re-estimate BatchNorm statistics of each θ(α) on the run's training images.
        reference: reference inputs for the retention measures (default: the built-in set).

    Returns:
        The sweep record (also in ``out/interpolation.json`` and ``transferkit.json``'s ``wise_ft``).
    """
    from .. import prepare
    from ..data.sources import eval_split
    from ..evaluate import compute_metrics
    from ..options import TrainConfig, train_option_names
    from ..plan import make_plan
    from ..predict import TrainedModel, load
    from ..runfolder import INTERPOLATION, RunFolder
    from ..training.loop import FitResult
    from .forgetting import pretrained_start

    started = time.perf_counter()
    grid = parse_alphas(alphas)
    source, target = RunFolder(run), RunFolder(out)
    trained = load(run, merge=True)
    info = trained.info
    if "lora" in info["model"].get("extra", {}):
        raise TransferKitError("interpolate does not take LoRA runs (their encoder weights did not change; the "
                               "adapter's scale is the knob). Fix: interpolate a fine-tune or two-stage run.")
    target.check_new(overwrite)
    saved = info.get("config", {})
    config = TrainConfig.from_options({**{k: v for k, v in saved.items() if k in set(train_option_names())},
                                       "out": str(out), "overwrite": overwrite})
    split = prepare.load_data(config)
    val, val_name = (split.val, "the run's validation split") if data is None else \
        (eval_split(str(data), trained.classes).samples, str(data))
    model = trained.model
    points, chosen, probe_source = wise_ft(
        model, pretrained_start(info), source.probe_head(), split, alphas=grid, val=val,
        bn_recalibrate=bn_recalibrate, reference=reference, info=info, batch_size=batch_size, progress=progress,
        test=_limited(split.test, config.test_per_class))
    record = sweep_record(points, chosen, source_run=str(run), chosen_on=val_name, probe_head=probe_source,
                          bn_recalibrated=bn_recalibrate)
    test, test_samples = None, _limited(split.test, config.test_per_class)
    if test_samples is not None and len(test_samples):
        probabilities = TrainedModel(model, trained.classes)._probabilities(test_samples.items, batch_size)
        test = compute_metrics(np.asarray(test_samples.labels), probabilities, trained.classes)
    target.create(config, overwrite)
    target.save_model(model)
    target.save_json(INTERPOLATION, record)
    png = save_plot(points, target.path / "interpolation.png", chosen.alpha)
    seconds = time.perf_counter() - started
    result = FitResult([], 0, chosen.val_accuracy, seconds)  # history, best epoch, best validation score, seconds
    target.finish(model=model, data=split, config=config, plan=make_plan(model, config), result=result, test=test,
                  timings={"seconds": seconds}, extra={"wise_ft": {**record, "plot": str(png) if png else None}})
    return {**record, "out": str(target.path), "test": test, "plot": str(png) if png else None}


def _limited(samples: Any, per_class: int | None) -> Any:
    """The run's test split as the run scored it (``--test-per-class``)."""
    if samples is None or per_class is None:
        return samples
    from ..data.splits import take_per_class

    return take_per_class(samples, per_class, seed=0)[0]
