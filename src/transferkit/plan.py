"""What a run will do, before it does it: layer groups, phases, LRs per group, BatchNorm policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .models.groups import LayerGroup
from .models.model import TransferModel
from .strategies import BN_POLICIES, Phase


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

    @classmethod
    def build(cls, model: TransferModel, groups: list[LayerGroup], phases: list[Phase], bn: str,
              bn_chosen_by_auto: bool, warmup: float, notes: tuple[str, ...] = ()) -> Plan:
        sizes = {name: p.numel() for name, p in model.named_parameters()}
        return cls(model=f"{model.spec.spec} ({model.spec.weights} weights)", head=model.describe_head(),
                   preprocessing=model.preprocessing.describe(),
                   groups=[(g.name, sum(sizes[n] for n in g.param_names)) for g in groups], phases=list(phases),
                   bn=bn, bn_chosen_by_auto=bn_chosen_by_auto, warmup=warmup, notes=notes)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "head": self.head, "preprocessing": self.preprocessing,
                "groups": [{"name": n, "params": c} for n, c in self.groups],
                "phases": [p.to_dict() for p in self.phases], "bn": self.bn, "warmup": self.warmup,
                "notes": list(self.notes)}

    def __str__(self) -> str:
        width = max(len(n) for n, _ in self.groups) + 2
        lines = [f"Model: {self.model}", self.head, f"Preprocessing: {self.preprocessing}",
                 f"BatchNorm: {self.bn}{' (chosen by --bn auto)' if self.bn_chosen_by_auto else ''} — "
                 f"{BN_POLICIES[self.bn]}", "", "Layer groups (input → output):",
                 f"  {'#':>3}  {'group':<{width}}{'params':>12}"]
        for i, (name, count) in enumerate(self.groups):
            lines.append(f"  {i:>3}  {name:<{width}}{count:>12,}")
        lines.append(f"  {'':>3}  {'total':<{width}}{sum(c for _, c in self.groups):>12,}")
        lines += ["", f"Phases (peak LR per group; each phase warms up over {self.warmup:.0%} of its steps, "
                      "then decays on a cosine):"]
        names = [n for n, _ in self.groups]
        name_width = max(len(p.name) for p in self.phases) + 2
        epoch = 1
        for phase in self.phases:
            span = f"epoch {epoch}" if phase.epochs == 1 else f"epochs {epoch}-{epoch + phase.epochs - 1}"
            frozen = len(names) - len(phase.lrs)
            lines.append(f"  {span:<13} {phase.name:<{name_width}} trains {len(phase.lrs)} of {len(names)} groups"
                         f"{f' ({frozen} frozen)' if frozen else ''}: {_lr_runs(names, phase.lrs)}")
            epoch += phase.epochs
        lines.append(f"  ({epoch - 1} epochs at most; early stopping may end a phase sooner)")
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


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
