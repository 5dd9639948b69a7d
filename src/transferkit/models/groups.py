"""Layer groups, ordered from input to output, for any architecture.

Three sources, best first: timm's ``group_matcher`` (stem, stages, final norm), the Hugging Face
``encoder.layer.N`` convention (embeddings, layer 0..N-1, the rest), and for any other ``nn.Module``
the order in which its top-level children first run in one forward pass.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import check_int


@dataclass(frozen=True)
class LayerGroup:
    """Parameters that train together, named for the user (e.g. ``stem``, ``blocks.3``, ``head``)."""

    name: str
    param_names: tuple[str, ...]


def group_backbone(backbone: nn.Module, example: torch.Tensor | None = None) -> list[LayerGroup]:
    """The best available grouping of a backbone's parameters (see the module docstring)."""
    if hasattr(backbone, "group_matcher"):
        groups = group_timm(backbone)
        if groups:
            return groups
    groups = group_encoder_layers(backbone)
    if groups:
        return groups
    return group_by_forward_order(backbone, example) if example is not None else group_by_children(backbone)


def group_timm(backbone: nn.Module) -> list[LayerGroup]:
    """Coarse groups from timm's ``group_matcher``."""
    from timm.models import group_parameters

    try:
        grouped = group_parameters(backbone, backbone.group_matcher(coarse=True))
    except (AttributeError, NotImplementedError, TypeError):
        return []
    names = [param_names for _, param_names in sorted(grouped.items())]
    return [LayerGroup(_group_name(i, n), tuple(n)) for i, n in enumerate(names) if n]


_ENCODER_LAYER = re.compile(r"(^|\.)(encoder\.layer|layers|transformer\.layer)\.(\d+)\.")


def group_encoder_layers(module: nn.Module) -> list[LayerGroup]:
    """Transformers convention: ``embeddings`` (everything before layer 0), ``layer.0`` .. ``layer.N-1``,
    then ``pooler`` / final norms (everything after). Empty when the module has no numbered layers."""
    before, layers, after = [], {}, []
    for name, _ in module.named_parameters():
        match = _ENCODER_LAYER.search(name)
        if match:
            layers.setdefault(int(match.group(3)), []).append(name)
        elif layers:
            after.append(name)
        else:
            before.append(name)
    if not layers:
        return []
    groups = [LayerGroup("embeddings", tuple(before))] if before else []
    groups += [LayerGroup(f"layer.{i}", tuple(layers[i])) for i in sorted(layers)]
    if after:
        groups.append(LayerGroup("final", tuple(after)))
    return groups


def group_by_children(module: nn.Module) -> list[LayerGroup]:
    """Top-level children that own parameters, in registration order (parameters set directly on the
    module itself come first, as ``stem``)."""
    groups = []
    direct = tuple(n for n, _ in module.named_parameters(recurse=False))
    if direct:
        groups.append(LayerGroup("stem", direct))
    for child_name, child in module.named_children():
        names = tuple(f"{child_name}.{n}" for n, _ in child.named_parameters())
        if names:
            groups.append(LayerGroup(child_name, names))
    return groups


def group_by_forward_order(module: nn.Module, example: torch.Tensor) -> list[LayerGroup]:
    """Top-level children in the order they first run on ``example`` (registration order can differ
    from execution order); children that never run keep their registration position at the end."""
    by_registration = group_by_children(module)
    order: list[str] = []
    handles = [child.register_forward_pre_hook(lambda m, a, name=name: order.append(name) if name not in order
                                                else None)
               for name, child in module.named_children()]
    try:
        was_training = module.training
        module.eval()
        with torch.no_grad():
            module(example)
        module.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    rank = {name: i for i, name in enumerate(order)}
    stem = [g for g in by_registration if g.name == "stem"]
    rest = [g for g in by_registration if g.name != "stem"]
    rest.sort(key=lambda g: rank.get(g.name, len(rank)))
    return stem + rest


def check_groups(name: str, value: object) -> int | None:
    return None if value is None else check_int(name, value, 2, "an integer of at least 2 (backbone groups + the head)",
                                                4)


def coarsen(groups: list[LayerGroup], n: int | None) -> list[LayerGroup]:
    """Merge neighbouring backbone groups so that ``n`` groups remain, the head (last) kept on its own."""
    if n is None:
        return groups
    check_groups("groups", n)
    body, head = groups[:-1], groups[-1]
    if n - 1 >= len(body):
        return groups
    merged = []
    bounds = [round(i * len(body) / (n - 1)) for i in range(n)]
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        chunk = body[start:stop]
        name = chunk[0].name if len(chunk) == 1 else f"{chunk[0].name}..{chunk[-1].name}"
        merged.append(LayerGroup(name, tuple(p for g in chunk for p in g.param_names)))
    return [*merged, head]


def _group_name(index: int, param_names: list[str]) -> str:
    prefix = os.path.commonprefix([n.split(".") for n in param_names])
    if prefix and len(prefix) < len(param_names[0].split(".")):
        # name a stage, not a block inside it: "blocks.0", not "blocks.0.0"
        return ".".join(prefix[:2] if len(prefix) > 1 and prefix[1].isdigit() else prefix[:1])
    if index == 0:
        return "stem"
    tops: list[str] = []
    for name in param_names:
        parts = name.split(".")
        top = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
        if top not in tops:
            tops.append(top)
    return "+".join(tops[:3])
