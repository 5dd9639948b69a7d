"""What a run will do, before it does it — decided here, once: the task, layer groups, phases, LRs per group,
BatchNorm policy, and where each phase runs (on images, on cached backbone features, or as one exact fit of the head).

The cache preparation (:mod:`transferkit.prepare`) and the loop (:mod:`transferkit.training.loop`) read these
decisions; neither makes them again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from .errors import TransferKitError
from .models.groups import LayerGroup
from .models.model import TransferModel
from .options import parse_lrs
from .strategies import BN_POLICIES, SCHEDULE_HELP, Phase, build_phases, default_lr, resolve_bn_policy
from .tasks import get_task, infer_task

if TYPE_CHECKING:
    from .options import TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class Plan:
    """A run's schedule. ``str(plan)`` is what ``transferkit plan`` prints."""

    model: str
    head: str
    preprocessing: str
    groups: list[tuple[str, int]]
    phases: list[Phase]
    bn: str
    bn_chosen_by_auto: bool
    warmup: float
    notes: tuple[str, ...] = ()
    task: str = "classification"
    task_reason: str = ""
    batch_size: int = 32
    processes: int = 1
    sync_bn: bool = False
    schedule: str = "per-phase"

    @classmethod
    def build(cls, model: TransferModel, groups: list[LayerGroup], phases: list[Phase], bn: str,
              bn_chosen_by_auto: bool, warmup: float, notes: tuple[str, ...] = (), task: str = "classification",
              task_reason: str = "", batch_size: int = 32, processes: int = 1, sync_bn: bool = False,
              schedule: str = "per-phase") -> Plan:
        sizes = {name: p.numel() for name, p in model.named_parameters()}
        return cls(model=f"{model.spec.spec} ({model.spec.weights} weights)", head=model.describe_head(),
                   preprocessing=model.preprocessing.describe(),
                   groups=[(g.name, sum(sizes[n] for n in g.param_names)) for g in groups], phases=list(phases),
                   bn=bn, bn_chosen_by_auto=bn_chosen_by_auto, warmup=warmup, notes=notes, task=task,
                   task_reason=task_reason, batch_size=batch_size, processes=processes, sync_bn=sync_bn,
                   schedule=schedule)

    @property
    def distribution(self) -> dict[str, Any]:
        """How the run is spread over processes: the global batch, each process's part, and what that means for
        learning rates and BatchNorm (``transferkit.json`` keeps it)."""
        statistics = ("n/a (no phase trains BatchNorm statistics)" if self.bn != "train" or self.processes == 1 else
                      "SyncBatchNorm: over the global batch" if self.sync_bn else
                      f"per process: over its {self.batch_size // self.processes} samples, running statistics those "
                      "of process 0 (SyncBatchNorm needs GPUs)")
        return {"processes": self.processes, "global_batch": self.batch_size,
                "per_process_batch": self.batch_size // self.processes, "lr_scaling": "none",
                "batchnorm_statistics": statistics}

    def describe_batch(self) -> str:
        if self.processes == 1:
            return f"Batch: {self.batch_size} per step (1 process)"
        d = self.distribution
        text = (f"Batch: {self.batch_size} per step in total — {self.processes} processes x {d['per_process_batch']}; "
                "the learning rates below apply to this global batch, unscaled")
        return text + (f". BatchNorm statistics {d['batchnorm_statistics']}" if self.bn == "train" else "")

    def needs_features(self, start: int = 0) -> bool:
        """Whether a phase from ``start`` on runs on cached backbone features (exact fit included)."""
        return any(p.runs_on in ("features", "exact-fit") for p in self.phases[start:])

    def needs_images(self, start: int = 0) -> bool:
        """Whether a phase from ``start`` on reads images (so the decoded-input cache pays); a phase on cached
        activations reads them once, from the same datasets as the images' path (so both see the same inputs)."""
        return any(p.runs_on in ("images", "activations") for p in self.phases[start:])

    def needs_activations(self, start: int = 0) -> bool:
        """Whether a phase from ``start`` on trains on its frozen prefix's cached outputs."""
        return any(p.runs_on == "activations" for p in self.phases[start:])

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "model": self.model, "head": self.head, "preprocessing": self.preprocessing,
                "groups": [{"name": n, "params": c} for n, c in self.groups],
                "phases": [p.to_dict() for p in self.phases], "bn": self.bn, "warmup": self.warmup,
                "schedule": self.schedule,
                "notes": list(self.notes), "distributed": self.distribution}

    def __str__(self) -> str:
        width = max(len(n) for n, _ in self.groups) + 2
        lines = [f"Task: {self.task}{f' ({self.task_reason})' if self.task_reason else ''}",
                 f"Model: {self.model}", self.head, f"Preprocessing: {self.preprocessing}",
                 f"BatchNorm: {self.bn}{' (chosen by --bn auto)' if self.bn_chosen_by_auto else ''} — "
                 f"{BN_POLICIES[self.bn]}", self.describe_batch(), "", "Layer groups (input → output):",
                 f"  {'#':>3}  {'group':<{width}}{'params':>12}"]
        for i, (name, count) in enumerate(self.groups):
            lines.append(f"  {i:>3}  {name:<{width}}{count:>12,}")
        lines.append(f"  {'':>3}  {'total':<{width}}{sum(c for _, c in self.groups):>12,}")
        how = SCHEDULE_HELP[self.schedule].format(warmup=f"{self.warmup:.0%}")
        lines += ["", f"Phases (peak LR per group; --schedule {self.schedule}: {how}):"]
        names = [n for n, _ in self.groups]
        name_width = max(len(p.name) for p in self.phases) + 2
        epoch = 1
        for phase in self.phases:
            span = f"epoch {epoch}" if phase.epochs == 1 else f"epochs {epoch}-{epoch + phase.epochs - 1}"
            frozen = len(names) - len(phase.lrs)
            where = {"images": "", "features": " — on cached features",
                     "exact-fit": " — one exact fit on cached features",
                     "activations": f" — on the cached outputs of the frozen {names[0]}..{names[frozen - 1]}"
                                    f"{f' ({phase.views} augmented views)' if phase.views else ''}"}[phase.runs_on]
            lines.append(f"  {span:<13} {phase.name:<{name_width}} trains {len(phase.lrs)} of {len(names)} groups"
                         f"{f' ({frozen} frozen)' if frozen else ''}: {_lr_runs(names, phase.lrs)}{where}")
            epoch += phase.epochs
        lines.append(f"  ({epoch - 1} epochs at most; early stopping may end a phase sooner)")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def make_plan(model: TransferModel, config: TrainConfig, processes: int = 1) -> Plan:
    """The plan of a run: the strategy's phases for the model's layer groups, with where each phase runs (a task
    without cached features, such as segmentation, runs every phase on images), for ``processes`` processes sharing
    each (global) batch of ``config.batch_size``."""
    if config.strategy == "auto":
        raise TransferKitError("--strategy auto is decided when train measures the data, so it has no plan yet. Fix: "
                               "run `transferkit advise` to see what it would choose (and its plan with that "
                               "--strategy), or pass a strategy.")
    task = get_task(config.task)
    groups = model.layer_groups(config.groups)
    lr = config.lr if config.lr is not None else default_lr(config.strategy, model.is_text)
    phases = build_phases(config.strategy, groups, epochs=config.epochs, head_epochs=config.head_epochs,
                          lr=lr, head_lr=config.head_lr, lrs=parse_lrs(config.lrs),
                          lr_decay=config.lr_decay, unfreeze_every=config.unfreeze_every,
                          max_unfrozen=config.max_unfrozen)
    adapt = getattr(config, "adapt", "none")
    head_only = all(set(p.trainable) == {groups[-1].name} for p in phases)
    # adapting phases must see images; with --target-val every phase validates on it, so none may run on features
    on_images = adapt != "none" and (head_only or bool(getattr(config, "target_val", None)))
    feature_cache = "off" if on_images or not task.caches_features else config.feature_cache
    phases, notes = place_phases(phases, groups[-1].name, feature_cache=feature_cache,
                                 head_fit=config.head_fit, cache_views=config.cache_views,
                                 linear_head=model.linear_head() is not None)
    if config.prefix_cache != "off" and not on_images and adapt == "none" and not getattr(config, "target_val", None) \
            and task.caches_features and not model.is_text:
        phases, prefix_notes = place_prefixes(model, phases, groups, prefix_cache=config.prefix_cache,
                                              augment=config.augment, cache_views=config.cache_views)
        notes += prefix_notes
    if adapt != "none":
        aligned = "the head's hidden layer (a bottleneck)" if config.hidden else "the backbone's pooled features"
        notes += (f"Domain adaptation ({adapt}): every phase on images sees a source and a target batch in one forward "
                  f"pass; the discriminator reads {aligned} through gradient reversal (coefficient warming up "
                  "2/(1+exp(-10p))-1) and trains at the head's LR. Model selection: "
                  + ("--target-val." if getattr(config, "target_val", None) else "the source validation split "
                     "(no target labels are read)."),)
    if not model.is_text and not task.dense and any(p.runs_on == "images" for p in phases):
        notes += (f"Input pipeline: on-device augmentation {device_augment_note(config, phases, model)}.",)
    bn = resolve_bn_policy(config.bn, config.strategy, config.batch_size, dense=task.dense)
    sync_bn = bn == "train" and processes > 1 and torch.cuda.is_available() and not config.cpu
    inferred, reason = infer_task(config.data)
    reason = reason if inferred == task.name else "chosen with --task"
    notes += cheaper_accuracy_notes(config, phases) + budget_notes(config, phases)
    return Plan.build(model, groups, phases, bn, config.bn == "auto", config.warmup, notes + task.plan_notes(config),
                      task.name, reason, batch_size=config.batch_size, processes=processes, sync_bn=sync_bn,
                      schedule=config.schedule)


def cheaper_accuracy_notes(config: TrainConfig, phases: list[Phase]) -> tuple[str, ...]:
    """The plan's lines about ``--ema`` and ``--tta`` (nothing when they are off)."""
    notes = []
    if config.ema:
        notes.append(f"Weight average (--ema {config.ema:g}): after every optimizer step average = {config.ema:g} x "
                     f"average + {1 - config.ema:.3g} x weights (an exact head fit restarts it); validation, the best "
                     "epoch and the saved weights are the average's; BatchNorm running statistics are averaged too.")
    if config.tta == "flip":
        cached = [p.name for p in phases if p.runs_on != "images"]
        notes.append("Test-time augmentation (--tta flip): validation, test, evaluate and predict average the softmax "
                     "of each image and its horizontal flip"
                     + (f"; phase(s) {', '.join(cached)} validate on their cached un-flipped inputs." if cached
                        else "."))
    return tuple(notes)


def budget_notes(config: TrainConfig, phases: list[Phase]) -> tuple[str, ...]:
    """The plan's line about ``--budget`` (nothing without one): the epochs above are the most, fitted at run time."""
    if not config.budget:
        return ()
    costly = [p.name for p in phases if p.runs_on == "images"]
    return (f"Budget (--budget {config.budget:g} s, from the start of the run; the test evaluation after it is not "
            "counted): the epochs above are the most. After each epoch the rest of its phase is fitted to the time "
            "left, so its LR schedule still ends"
            + (f"; before phase(s) {', '.join(costly)} an epoch is estimated from a timed training step, and only the "
               "top groups train when an epoch of all of them does not fit" if costly else "")
            + ". When no epoch fits, the run stops with the best epoch's weights.",)


def device_augment_note(config: TrainConfig, phases: list[Phase], model: TransferModel) -> str:
    """Whether the phases on images augment their batches on the device (``--device-augment``), and why; raises for
    ``on`` with settings it cannot run with."""
    from .data.device import device_augment_choice

    _, why = device_augment_choice(
        config.device_augment, cuda=torch.cuda.is_available() and not config.cpu,
        decoded=config.decoded_cache == "auto", augment=config.augment,
        interpolation=model.preprocessing.interpolation, on_activations=any(p.runs_on == "activations" for p in phases))
    return why


def place_phases(phases: list[Phase], head: str, *, feature_cache: str, head_fit: str, cache_views: int,
                 linear_head: bool) -> tuple[list[Phase], tuple[str, ...]]:
    """Where each phase runs, and the plan's note about it.

    The phases at the start that train the head alone see a backbone that is still the pre-trained one: with
    ``--feature-cache auto`` they run on its cached features. Such a phase is one exact L-BFGS fit when the head
    is linear and (``--head-fit auto``) the features are un-augmented, or when ``--head-fit lbfgs`` asks for it;
    otherwise the head trains with SGD epochs on the cached views. Every other phase runs on images.
    """
    leading = 0
    while leading < len(phases) and set(phases[leading].trainable) == {head}:
        leading += 1
    if feature_cache != "auto" or leading == 0:
        return list(phases), ()
    if head_fit == "lbfgs" and not linear_head:
        logger.warning("--head-fit lbfgs needs a linear head (--hidden 0); the head trains with SGD instead.")
    exact = linear_head and (head_fit == "lbfgs" or (head_fit == "auto" and cache_views == 0))
    placed = [replace(p, runs_on="exact-fit" if exact else "features")
              for p in phases[:leading]] + list(phases[leading:])
    how = ("fitted exactly (L-BFGS logistic regression, L2 chosen on validation) in one step" if exact else
           f"trained with SGD on {'un-augmented' if not cache_views else cache_views} "
           f"{'view' if cache_views == 1 else 'views'}")
    which = "The head-only phase" if leading == 1 else f"Head-only phases 1-{leading}"
    return placed, (f"{which}: on cached backbone features (the frozen backbone runs once); the head is {how}.",)


def place_prefixes(model: TransferModel, phases: list[Phase], groups: list[LayerGroup], *, prefix_cache: str,
                   augment: str, cache_views: int) -> tuple[list[Phase], tuple[str, ...]]:
    """Which phases on images train on the cached outputs of their frozen prefix (the frozen-prefix cache), and the
    plan's note about it.

    A phase qualifies when some backbone groups train and the groups before them stay frozen, the backbone is a
    chain of modules (:func:`~transferkit.models.prefix.backbone_chain`), no earlier phase trains a group of the
    prefix (so the outputs cached before training stay valid), and nothing in the prefix is random or learns in
    training mode (:func:`~transferkit.models.prefix.prefix_blockers`). Without augmentation the cached path trains
    exactly as the uncached one; with augmentation it does only with ``--prefix-cache views`` (``--cache-views`` K
    augmented views, epoch ``e`` reading view ``e mod K``), otherwise those phases stay on images.
    """
    from .models.prefix import backbone_chain, prefix_blockers, prefix_cut

    names = [g.name for g in groups]
    wanted = [i for i, p in enumerate(phases) if p.runs_on == "images" and names[0] not in p.lrs
              and set(p.lrs) - {names[-1]}]
    if not wanted:
        return list(phases), ()
    listed = ", ".join(phases[i].name for i in wanted)
    views = 0
    if augment != "none":
        if prefix_cache != "views" or not cache_views:
            return list(phases), (f"Frozen-prefix cache: off for phase(s) {listed} — their inputs are augmented "
                                  f"(--augment {augment}); --augment none caches the frozen layers' outputs exactly, "
                                  "--prefix-cache views --cache-views K caches K augmented views of them.",)
        views = cache_views
    size = model.preprocessing.input_size
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    chain = backbone_chain(model.backbone, example)
    if chain is None:
        return list(phases), (f"Frozen-prefix cache: off for phase(s) {listed} — this backbone does not run as a "
                              "chain of layers that can be cut (e.g. a ViT's class token and position embeddings).",)
    placed, used, skipped = list(phases), [], []
    for i in wanted:
        phase = phases[i]
        trained_before = {n[len("backbone."):] for p in phases[:i] for g in groups if g.name in p.lrs
                          for n in g.param_names if n.startswith("backbone.")}
        trainable = {n[len("backbone."):] for g in groups if g.name in phase.lrs for n in g.param_names
                     if n.startswith("backbone.")}
        cut = prefix_cut(chain, trainable)
        prefix_params = {f"{path}.{n}" for path, m in chain[:cut] for n, _ in m.named_parameters()}
        blockers = prefix_blockers(chain, cut, example) if cut else []
        if cut == 0 or prefix_params & trained_before or blockers:
            why = ("no module before its first trainable one" if cut == 0 else
                   "an earlier phase trains part of its prefix" if prefix_params & trained_before else
                   "; ".join(blockers))
            skipped.append(f"{phase.name} ({why})")
            continue
        placed[i] = replace(phase, runs_on="activations", prefix=cut, views=views)
        used.append(f"{phase.name} (through {chain[cut - 1][0]})")
    notes = []
    if used:
        notes.append(f"Frozen-prefix cache: phase(s) {', '.join(used)} train on the cached outputs of their frozen "
                     "first layers, which run once before training instead of every step"
                     + (f"; {views} augmented view(s) per image (epoch e reads view e mod {views})" if views else
                        " (inputs not augmented: the same training as without the cache)") + ".")
    if skipped:
        notes.append(f"Frozen-prefix cache: off for {', '.join(skipped)}.")
    return placed, tuple(notes)


def _lr_runs(names: list[str], lrs: dict[str, float]) -> str:
    """Neighbouring groups with the same LR are shown as one range: ``stem..blocks.5 1e-04``."""
    runs: list[tuple[str, str, float]] = []
    for name in names:
        if name not in lrs:
            continue
        if runs and runs[-1][2] == lrs[name] and names.index(runs[-1][1]) == names.index(name) - 1:
            runs[-1] = (runs[-1][0], name, lrs[name])
        else:
            runs.append((name, name, lrs[name]))
    return ", ".join(f"{a if a == b else f'{a}..{b}'} {lr:.1e}" for a, b, lr in runs)
