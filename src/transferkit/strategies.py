"""Strategies as data: each is a list of :class:`Phase` (which layer groups train, at what LR, how long).

``apply_phase`` turns a phase into ``requires_grad`` flags, ``set_train_mode`` into module modes
(BatchNorm policy), ``param_groups`` builds one optimizer for the whole run (every layer group, so
optimizer state survives phase changes) and ``set_phase_lrs`` sets each group's LR at each step. The
training loop knows nothing about strategy names.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .errors import TransferKitError, check_choice, check_int, check_range
from .models.groups import LayerGroup

STRATEGIES = {
    "linear-probe": "frozen backbone (BatchNorm in eval mode), only the new head trains",
    "fine-tune": "all layers train: pre-trained layers at a small LR, the new head at a larger one",
    "two-stage": "the head alone for --head-epochs, then all layers at the small LR (LP-FT)",
    "progressive": "the head for --head-epochs, then one more group every --unfreeze-every epochs, top down "
                   "(ULMFiT), then --epochs with all (or --max-unfrozen) groups",
    "scratch": "same architecture with random weights, all layers at a from-scratch LR (the baseline)",
    "lora": "language models: low-rank adapters on the attention projections (peft) and the head train; the "
            "encoder stays frozen",
}

BN_POLICIES = {
    "auto": "freeze when starting from pre-trained weights or with batches under 16 (segmentation: any batch), "
            "else train",
    "freeze": "every BatchNorm layer of the backbone keeps its running statistics (eval mode); affine weights may "
              "train",
    "train": "BatchNorm layers of trainable groups update their statistics (frozen groups never do)",
}

# Rules of thumb: new layers 1e-3, pre-trained layers 1e-4 (10x smaller), from scratch 1e-3..1e-2.
DEFAULT_HEAD_LR = 1e-3
DEFAULT_LR = 1e-4
DEFAULT_SCRATCH_LR = 3e-3
# Language models: the BERT recipe (2e-5..5e-5); LoRA adapters learn faster.
TEXT_LR, TEXT_SCRATCH_LR, TEXT_LORA_LR = 3e-5, 1e-4, 5e-4


def default_lr(strategy: str, text: bool) -> float | None:
    """The LR of pre-trained layers when ``--lr`` is not given (``None``: :func:`build_phases` picks it)."""
    if not text:
        return None
    return {"lora": TEXT_LORA_LR, "scratch": TEXT_SCRATCH_LR}.get(strategy, TEXT_LR)


# --- the checks of the strategy options (the option schema calls them too) ------------------------


def check_strategy(name: str, value: object) -> str:
    return check_choice(name, value, STRATEGIES, "See `transferkit train --help`.")


def check_lr(name: str, value: object) -> float | None:
    if value is None:
        return None
    return check_range(name, value, 0, 1, low_open=True, allowed="a learning rate in (0, 1)", example="1e-4")


def check_lr_decay(name: str, value: object) -> float | None:
    if value is None:
        return None
    return check_range(name, value, 0, 1, low_open=True, high_open=False, allowed="a factor in (0, 1]", example=0.5)


def check_max_unfrozen(name: str, value: object) -> int | None:
    if value is None:
        return None
    return check_int(name, value, 2, "an integer of at least 2 (the head and one more group)", 3)


def check_warmup(name: str, value: object) -> float:
    return check_range(name, value, 0, 1, allowed="a fraction of the phase's steps in [0, 1)", example=0.1)


def check_bn(name: str, value: object) -> str:
    return check_choice(name, value, BN_POLICIES, "Pass e.g. --bn auto.")


@dataclass(frozen=True)
class Phase:
    """One stretch of training with a fixed set of trainable groups.

    Attributes:
        name: shown to the user (``head``, ``all``, ``+blocks.5``).
        epochs: epochs in this phase.
        lrs: peak learning rate per trainable layer group; groups not listed are frozen.
        runs_on: where the phase's forward passes start — ``images`` (the whole model runs), ``features``
            (the head trains on cached backbone features), ``exact-fit`` (the linear head is fitted exactly on
            cached features: one step, which ends the phase) or ``activations`` (the backbone's frozen prefix ran
            once; the rest of the model trains on its cached outputs). Decided by :func:`transferkit.plan.make_plan`.
        prefix: ``activations``: how many modules of the backbone's chain (:mod:`transferkit.models.prefix`) make
            up the cached frozen prefix.
        views: ``activations``: augmented views cached per image (0: un-augmented outputs).
    """

    name: str
    epochs: int
    lrs: dict[str, float] = field(default_factory=dict)
    runs_on: str = "images"
    prefix: int = 0
    views: int = 0

    @property
    def trainable(self) -> tuple[str, ...]:
        return tuple(self.lrs)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LRPolicy:
    """Learning rates per layer group when pre-trained layers train.

    Attributes:
        lr: LR of pre-trained layers (or of all layers from scratch).
        head_lr: LR of the new head.
        lrs: explicit LRs spread over the groups: the last value is the head's, the others are spread
            over the backbone groups from input to output (``1e-5,1e-4,1e-3``: early, middle, head).
        lr_decay: layer-wise decay: the head gets ``head_lr``, every group below gets the next later
            group's LR times ``lr_decay``.
    """

    lr: float = DEFAULT_LR
    head_lr: float = DEFAULT_HEAD_LR
    lrs: tuple[float, ...] | None = None
    lr_decay: float | None = None

    def __post_init__(self) -> None:
        check_lr("lr", self.lr)
        check_lr("head_lr", self.head_lr)
        if self.lrs is not None and self.lr_decay is not None:
            raise TransferKitError("Pass either --lrs or --lr-decay, not both: both set per-group learning rates.")
        for value in self.lrs or ():
            check_lr("lrs", value)
        check_lr_decay("lr_decay", self.lr_decay)

    @property
    def discriminative(self) -> bool:
        return self.lrs is not None or self.lr_decay is not None

    def for_groups(self, names: list[str]) -> dict[str, float]:
        """LR of every group (the last is the head)."""
        body, head = names[:-1], names[-1]
        if self.lrs is not None:
            values = list(self.lrs)
            if len(values) == 1:
                return {n: values[0] for n in names}
            spread = values[:-1]
            chunk = {n: spread[min(len(spread) - 1, i * len(spread) // max(1, len(body)))] for i, n in enumerate(body)}
            return {**chunk, head: values[-1]}
        if self.lr_decay is not None:
            depth = len(body)
            return {**{n: self.head_lr * self.lr_decay ** (depth - i) for i, n in enumerate(body)},
                    head: self.head_lr}
        return {**{n: self.lr for n in body}, head: self.head_lr}


def uses_pretrained_weights(strategy: str) -> bool:
    return strategy != "scratch"


def build_phases(strategy: str, groups: list[LayerGroup], *, epochs: int, head_epochs: int = 3,
                 lr: float | None = None, head_lr: float | None = None, lrs: tuple[float, ...] | None = None,
                 lr_decay: float | None = None, unfreeze_every: int = 1,
                 max_unfrozen: int | None = None) -> list[Phase]:
    """The phases of a named strategy for a model's layer groups (the last group is the head).

    Args:
        strategy: one of :data:`STRATEGIES`.
        groups: the model's layer groups, input to output.
        epochs: epochs of the main phase (``two-stage``/``progressive``: once all their groups train).
        head_epochs: epochs of the head-only stage of ``two-stage`` and ``progressive``.
        lr: LR of pre-trained layers (``scratch``: of all layers).
        head_lr: LR of the new head.
        lrs: explicit per-group LRs, spread over the groups (see :class:`LRPolicy`).
        lr_decay: layer-wise LR decay from the head down (see :class:`LRPolicy`).
        unfreeze_every: ``progressive``: epochs between unfreezing one more group.
        max_unfrozen: ``progressive``: stop unfreezing when this many groups (head included) train.
    """
    check_strategy("strategy", strategy)
    check_int("epochs", epochs)
    names = [g.name for g in groups]
    head = names[-1]
    base = DEFAULT_SCRATCH_LR if strategy == "scratch" else DEFAULT_LR
    policy = LRPolicy(lr=base if lr is None else lr, head_lr=DEFAULT_HEAD_LR if head_lr is None else head_lr,
                      lrs=tuple(lrs) if lrs else None, lr_decay=lr_decay)
    table = policy.for_groups(names)
    if strategy == "scratch":
        return [Phase("all", epochs, table if policy.discriminative else {n: policy.lr for n in names})]
    if strategy == "linear-probe":
        return [Phase("head", epochs, {head: table[head]})]
    if strategy == "lora":
        if "lora" not in names:
            raise TransferKitError("The lora strategy needs a language model with LoRA adapters (hf:..., minilm-l6).")
        return [Phase("lora", epochs, {"lora": policy.lr, head: policy.head_lr})]
    if strategy == "fine-tune":
        return [Phase("all", epochs, table)]
    check_int("head_epochs", head_epochs)
    head_phase = Phase("head", head_epochs, {head: table[head]})
    if strategy == "two-stage":
        return [head_phase, Phase("all", epochs, table if policy.discriminative else {n: policy.lr for n in names})]
    check_int("unfreeze_every", unfreeze_every)
    check_max_unfrozen("max_unfrozen", max_unfrozen)
    limit = min(len(names) if max_unfrozen is None else max_unfrozen, len(names))
    phases = [head_phase]
    for count in range(2, limit + 1):  # groups training, head included
        training = names[-count:]
        last = count == limit
        phases.append(Phase("all" if last and limit == len(names) else f"+{training[0]}",
                            epochs if last else unfreeze_every, {n: table[n] for n in training}))
    return phases


def apply_phase(model: nn.Module, groups: list[LayerGroup], phase: Phase) -> None:
    """Set ``requires_grad`` for the phase: parameters of its groups train, all others are frozen."""
    trainable = {name for g in groups if g.name in phase.lrs for name in g.param_names}
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)


def resolve_bn_policy(policy: str, strategy: str, batch_size: int, dense: bool = False) -> str:
    """``auto`` becomes ``freeze`` when layers start from pre-trained weights or batches are under 16
    (small batches give noisy statistics; re-estimating pre-trained statistics on a small, shifted
    dataset undoes what the head learned), and ``train`` for a from-scratch run with batches of 16+.
    ``dense`` (segmentation): BatchNorm statistics pool every position of every feature map, so a small batch of
    images is not a small sample; a from-scratch run trains them whatever the batch size (frozen, the random
    initial statistics would never normalise anything)."""
    check_bn("bn", policy)
    if policy != "auto":
        return policy
    return "freeze" if uses_pretrained_weights(strategy) or (batch_size < 16 and not dense) else "train"


def set_train_mode(model: nn.Module, bn: str = "train") -> None:
    """``model.train()``, except what must not change: a fully frozen backbone runs in eval mode;
    BatchNorm layers whose parameters are all frozen keep their running statistics; with ``bn="freeze"``
    every BatchNorm layer of the backbone keeps its running statistics (its affine parameters still train if
    their group does). A new head's own BatchNorm layers (a segmentation decoder's) always learn theirs."""
    model.train()
    backbone = getattr(model, "backbone", None)
    if backbone is not None and not any(p.requires_grad for p in backbone.parameters()):
        backbone.eval()
        return
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            in_backbone = backbone is None or name.startswith("backbone.")
            if (bn == "freeze" and in_backbone) or (params and not any(p.requires_grad for p in params)):
                module.eval()


def param_groups(model: nn.Module, groups: list[LayerGroup], weight_decay: float,
                 no_decay_groups: frozenset[str] = frozenset()) -> list[dict]:
    """Optimizer parameter groups for every layer group, split by decay kind. Biases and normalisation
    weights (1-d tensors) get no weight decay, nor do the groups in ``no_decay_groups``. Frozen
    parameters have no gradient, so the optimizer skips them and keeps their state untouched."""
    params = dict(model.named_parameters())
    result = []
    for group in groups:
        decay = [params[n] for n in group.param_names if params[n].ndim > 1]
        no_decay = [params[n] for n in group.param_names if params[n].ndim <= 1]
        wd = 0.0 if group.name in no_decay_groups else weight_decay
        for tensors, kind_wd, kind in ((decay, wd, "decay"), (no_decay, 0.0, "no_decay")):
            if tensors:
                result.append({"params": tensors, "lr": 0.0, "weight_decay": kind_wd,
                               "name": f"{group.name}/{kind}", "layer_group": group.name})
    return result


def set_phase_lrs(optimizer, phase: Phase, multiplier: float) -> None:
    """Each parameter group's LR: its layer group's peak LR in this phase times the schedule multiplier
    (frozen groups: 0)."""
    for group in optimizer.param_groups:
        group["lr"] = phase.lrs.get(group["layer_group"], 0.0) * multiplier


def warmup_cosine(total_steps: int, warmup_fraction: float):
    """LR multiplier: linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to zero."""
    check_warmup("warmup", warmup_fraction)
    warmup = int(round(total_steps * warmup_fraction))

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return multiplier


SCHEDULE_HELP = {
    "per-phase": "each phase warms up over {warmup} of its steps, then decays on a cosine",
    "single": "one warm-up over {warmup} of the run's steps, then one cosine across every phase (no restart when a "
              "phase starts)",
}


def schedule_span(phases: list[Phase], index: int, schedule: str = "per-phase") -> tuple[int, int | None]:
    """Where phase ``index`` sits on the LR schedule: (epochs of the schedule before it, the schedule's epochs).
    ``per-phase``: ``(0, None)``, every phase has its own warm-up + cosine. ``single``: one schedule over the epochs
    of every phase that takes optimizer steps (an exact head fit takes none, so it has no place on it)."""
    check_choice("schedule", schedule, SCHEDULE_HELP)
    if schedule == "per-phase":
        return 0, None
    stepping = [p.epochs if p.runs_on != "exact-fit" else 0 for p in phases]
    return sum(stepping[:index]), max(1, sum(stepping))


# --- recipes: how each strategy trains in a fair comparison (``transferkit compare``) ---------------


@dataclass(frozen=True)
class Recipe:
    """The settings a strategy trains with when strategies are compared: its own budget, stopping rule, LR and
    augmentation, as ``train`` options. ``train`` itself keeps its defaults; ``compare`` applies these.

    Attributes:
        options: ``train`` options for image models.
        text: overrides of ``options`` for language models.
        lr_option: the option the LR search (``compare --tune lr``) varies; ``None``: nothing to search.
        min_steps: on small data, raise the epochs so a run gets at least this many optimizer steps (an epoch of
            10 images per class is 3 steps of 32), up to ``max_epochs``.
        max_epochs: the cap of that raise.
        why: one line for the report.
    """

    options: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    lr_option: str | None = "lr"
    min_steps: int = 0
    max_epochs: int = 0
    why: str = ""

    def resolve(self, text: bool, train_examples: int, batch_size: int) -> dict[str, Any]:
        """The recipe's ``train`` options for a run on ``train_examples`` examples (epochs raised to ``min_steps``;
        empty when the strategy keeps ``train``'s defaults)."""
        options = {**self.options, **(self.text if text else {})}
        if self.min_steps and "epochs" in options:
            steps_per_epoch = max(1, train_examples // batch_size)
            wanted = math.ceil(self.min_steps / steps_per_epoch)
            options["epochs"] = max(options["epochs"], min(wanted, self.max_epochs))
        return options


# Scratch (He et al. 2018: "Rethinking ImageNet Pre-training"): trained long enough, a from-scratch model catches up
# with a pre-trained one on large data, so the baseline gets a long budget and stops on a validation plateau
# judged against its own schedule (a fifth of it, never during warm-up: patience_after_lr 1.0 keeps the rule it was
# measured with, where train's default also waits for the LR to halve), stronger weight decay (it has no
# pre-trained start to stay near), and at least 1,200 optimizer steps on small data.
RECIPES: dict[str, Recipe] = {
    "scratch": Recipe(options={"epochs": 40, "patience_fraction": 0.2, "patience_after_lr": 1.0,
                               "lr": DEFAULT_SCRATCH_LR, "augment": "light",
                               "weight_decay": 0.05},
                      text={"epochs": 20, "lr": TEXT_SCRATCH_LR},
                      min_steps=1200, max_epochs=200,
                      why="long budget; stops when val accuracy plateaus for a fifth of the schedule (not during "
                          "warm-up); at least 1,200 steps on small data; weight decay 0.05"),
    "linear-probe": Recipe(lr_option="head_lr",
                           why="train's defaults: the exact L-BFGS fit of the head (its L2 chosen on validation)"),
    "two-stage": Recipe(why="train's defaults: exact head fit, then 10 epochs (text 4) of all layers at 1e-4 (text "
                            "3e-5), patience max(3, a fifth of the phase), judged once the LR has halved"),
    "fine-tune": Recipe(why="train's defaults"),
    "progressive": Recipe(why="train's defaults"),
    "lora": Recipe(why="train's defaults"),
}

# The LR search of ``compare --tune lr``: this many values on the 1-3-10 log grid, centred on the recipe's LR.
LR_SEARCH_POINTS = 3


def lr_grid(center: float, points: int = LR_SEARCH_POINTS) -> list[float]:
    """``points`` learning rates on the 1-3-10 grid (half-decade steps) centred on ``center``'s nearest grid value,
    e.g. 3e-3 -> [1e-3, 3e-3, 1e-2]; 1e-4 -> [3e-5, 1e-4, 3e-4]."""
    check_lr("lr", center)
    check_int("points", points)
    guess = math.floor(2 * math.log10(center))
    k = min(range(guess - 2, guess + 3), key=lambda i: abs(math.log10(_grid_value(i) / center)))
    start = k - (points - 1) // 2
    return [_grid_value(i) for i in range(start, start + points)]


def _grid_value(k: int) -> float:
    """The k-th value of the 1-3-10 grid: k = 0 -> 1, 1 -> 3, 2 -> 10, -1 -> 0.3, -2 -> 0.1, ..."""
    decade, step = divmod(k, 2)
    return float(f"{(1, 3)[step]}e{decade}")
