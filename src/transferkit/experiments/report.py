"""A self-contained HTML report for ``compare``: plots embedded as PNG data, tables, no external files. Figures are
named after the task's (:class:`Names`: accuracy and macro-F1 for classification; mIoU and mean Dice for
segmentation)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .grid import CellResult


class Names(NamedTuple):
    """What the cells' figures are called: the main test score, the second one, the validation figure of the
    learning curves, and what a size counts."""

    score: str = "accuracy"
    second: str = "macro-F1"
    validation: str = "accuracy"
    size: str = "training examples per class"


CLASSIFICATION = Names()


def _size_column(names: Names) -> str:
    """The size column's heading: "per class" for classification, the task's own unit otherwise."""
    return "per class" if names.size == CLASSIFICATION.size else names.size


def size_unit(size: str) -> str:
    """How the data-efficiency text writes a size's unit after the number: "/class" for classification, the task's
    own unit otherwise (segmentation: "200 training images", not "200/class")."""
    return "/class" if size == CLASSIFICATION.size else f" {size}"


def summary_markdown(results: Sequence[CellResult], factors: Sequence[dict[str, Any]], title: str,
                     names: Names = CLASSIFICATION) -> str:
    """The grid and the derived factors as Markdown tables."""
    column = _size_column(names)
    lines = [f"# {title}", "", f"| strategy | {column} | seeds | test {names.score} (mean ± spread) | "
             f"{names.second} | wall s | epochs to 95% of best | s to 95% of best |",
             "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, int], list[CellResult]] = {}
    for r in results:
        groups.setdefault((r.strategy, r.per_class), []).append(r)
    for (strategy, n), runs in sorted(groups.items()):
        accs = [r.test_accuracy for r in runs]
        reached = [c for c in (r.convergence() for r in runs) if c]
        conv, conv_s = [c[0] for c in reached], [c[1] for c in reached]
        lines.append(f"| {strategy} | {n} | {len(runs)} | {sum(accs) / len(accs):.3f} ± "
                     f"{(max(accs) - min(accs)) / 2:.3f} | {sum(r.macro_f1 for r in runs) / len(runs):.3f} | "
                     f"{sum(r.seconds for r in runs) / len(runs):.0f} | "
                     f"{(sum(conv) / len(conv)) if conv else float('nan'):.1f} | "
                     f"{(sum(conv_s) / len(conv_s)) if conv_s else float('nan'):.1f} |")
    if factors:
        lines += ["", f"| strategy | {column} | test {names.score} | scratch needs ({column}) | data efficiency | "
                      "speed-up |", "|---|---|---|---|---|---|"]
        for f in factors:
            needed = f"{f['scratch_per_class_needed']:.0f}" if f["scratch_per_class_needed"] else "> max"
            lines.append(f"| {f['strategy']} | {f['per_class']} | {f['test_accuracy']:.3f} | {needed} | "
                         f"{f['data_efficiency_text']} | {f['speedup_text']} |")
    return "\n".join(lines) + "\n"


def _image_uri(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def plots(results: Sequence[CellResult], names: Names = CLASSIFICATION) -> list[tuple[str, str]]:
    """(title, data URI) for: accuracy vs examples per class; validation accuracy vs epoch and vs seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    strategies = sorted({r.strategy for r in results})
    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy in strategies:
        sizes = sorted({r.per_class for r in results if r.strategy == strategy})
        accs = [[r.test_accuracy for r in results if r.strategy == strategy and r.per_class == n] for n in sizes]
        means = [sum(a) / len(a) for a in accs]
        ax.plot(sizes, means, marker="o", label=strategy)
        ax.fill_between(sizes, [min(a) for a in accs], [max(a) for a in accs], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel(names.size)
    ax.set_ylabel(f"test {names.score}")
    ax.legend()
    ax.grid(alpha=0.3)
    figures.append((f"Test {names.score} vs {names.size} (mean, min-max over seeds)", _png(fig)))
    plt.close(fig)
    size = max({r.per_class for r in results} & {r.per_class for r in results if r.strategy != "scratch"} or
               {r.per_class for r in results})
    for x_key, label in (("epoch", "epoch"), ("seconds", "seconds")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in results:
            if r.per_class == size and r.seed == 0 and r.curve:
                ax.plot([p[x_key] for p in r.curve], [p["val_accuracy"] for p in r.curve], marker=".",
                        label=r.strategy)
        ax.set_xlabel(label)
        ax.set_ylabel(f"validation {names.validation}")
        ax.legend()
        ax.grid(alpha=0.3)
        figures.append((f"Validation {names.validation} vs {label} ({size} {_size_column(names)}, seed 0)", _png(fig)))
        plt.close(fig)
    return figures


def write_report(path: Path, results: Sequence[CellResult], factors: Sequence[dict[str, Any]], title: str,
                 names: Names = CLASSIFICATION, pictures: Sequence[tuple[str, Any]] = ()) -> Path:
    """The report; ``pictures`` are extra (caption, PIL image) figures, e.g. a dense task's predictions."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for caption, uri in [*plots(results, names), *((c, _image_uri(p)) for c, p in pictures)]:
        body.append(f"<figure><img src='{uri}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}"
                    "</figcaption></figure>")
    body.append("<pre>" + html.escape(summary_markdown(results, factors, "Tables", names)) + "</pre>")
    Path(path).write_text("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) +
                          "</title><style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
                          "img{max-width:100%}</style></head><body>" + "\n".join(body) + "</body></html>",
                          encoding="utf-8")
    return Path(path)
