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

from .grid import VIEWS, CellResult, recipe_table


class Names(NamedTuple):
    """What the cells' figures are called: the main test score, the second one, the validation figure of the
    learning curves and the LR search, and what a size counts."""

    score: str = "accuracy"
    second: str = "macro-F1"
    validation: str = "accuracy"
    size: str = "training examples per class"


CLASSIFICATION = Names()


def _size_column(names: Names) -> str:
    """The size column's heading: "per class" for classification, the task's own unit otherwise."""
    return "per class" if names.size == CLASSIFICATION.size else names.size


def summary_markdown(results: Sequence[CellResult], factors: Sequence[dict[str, Any]], title: str,
                     names: Names = CLASSIFICATION, *,
                     intervals: dict[tuple[str, str, int], list[float]] | None = None,
                     comparisons: Sequence[dict[str, Any]] = (), lr_search: dict[str, Any] | None = None,
                     wall_seconds: float | None = None, compute_seconds: float | None = None) -> str:
    """The grid, the recipes, both data-efficiency factors, which strategies are distinguishable and the LR search,
    as Markdown."""
    intervals = intervals or {}
    lines = [f"# {title}", ""]
    if wall_seconds is not None or compute_seconds is not None:
        parts = ([f"wall time of the grid {_hours(wall_seconds)}"] if wall_seconds is not None else []) + \
                ([f"compute (every run, LR search included) {_hours(compute_seconds)}"]
                 if compute_seconds is not None else [])
        sentence = "; ".join(parts)
        lines += [sentence[0].upper() + sentence[1:] + ".", ""]
    groups: dict[tuple[str, str, int], list[CellResult]] = {}
    for r in results:
        groups.setdefault((r.strategy, r.budget, r.per_class), []).append(r)
    lines += _recipes(results)
    interval_note = "mean [95% bootstrap interval]" if intervals else "mean ± half the spread over seeds"
    column = _size_column(names)
    lines += ["## Results", "", f"| strategy | budget | {column} | seeds | test {names.score} ({interval_note}) | "
              f"{names.second} | wall s | epochs run (best) | stopped | images seen | LR | epochs to 95% of best | "
              "s to 95% of best |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (strategy, budget, n), runs in sorted(groups.items()):
        accs = [r.test_accuracy for r in runs]
        reached = [c for c in (r.convergence() for r in runs) if c]
        conv, conv_s = [c[0] for c in reached], [c[1] for c in reached]
        mean = sum(accs) / len(accs)
        shown = (f"{mean:.3f} [{intervals[(strategy, budget, n)][0]:.3f}, {intervals[(strategy, budget, n)][1]:.3f}]"
                 if (strategy, budget, n) in intervals else f"{mean:.3f} ± {(max(accs) - min(accs)) / 2:.3f}")
        stops = sorted({r.stopped for r in runs if r.stopped})
        lrs = sorted({str(r.recipe.get("lr", r.recipe.get("head_lr", ""))) for r in runs} - {"", "None"})
        lines.append(f"| {strategy} | {_budget(budget)} | {n} | {len(runs)} | {shown} | "
                     f"{sum(r.macro_f1 for r in runs) / len(runs):.3f} | "
                     f"{sum(r.seconds for r in runs) / len(runs):.0f} | "
                     f"{_span([r.epochs_run for r in runs])} ({_span([r.best_epoch for r in runs])}) | "
                     f"{', '.join(stops) or '-'} | {sum(r.images_seen for r in runs) / len(runs):,.0f} | "
                     f"{', '.join(lrs) or 'default'} | "
                     f"{(sum(conv) / len(conv)) if conv else float('nan'):.1f} | "
                     f"{(sum(conv_s) / len(conv_s)) if conv_s else float('nan'):.1f} |")
    lines += _shift_and_retention(groups, names)
    if factors:
        lines += ["", "## Data efficiency", "",
                  f"How many {names.size} `scratch` needs for the strategy's test {names.score} (interpolated "
                  "on the log scale between measured sizes), divided by the strategy's; intervals: 95% paired "
                  "bootstrap over seeds and test samples (\"never\": scratch does not get there by its largest size "
                  "in over 2.5% of the replicates).", "",
                  f"- **converged**: {VIEWS['converged']};",
                  f"- **equal budget**: {VIEWS['equal_budget']}.", "",
                  f"| strategy | {column} | test {names.score} | converged: scratch needs | converged factor | "
                  "equal budget: scratch needs | equal-budget factor | speed-up |", "|---|---|---|---|---|---|---|---|"]
        for f in factors:
            accuracy = f"{f['test_accuracy']:.3f}"
            if f.get("test_accuracy_interval"):
                low, high = f["test_accuracy_interval"]
                accuracy += f" [{low:.3f}, {high:.3f}]"
            cells = []
            for view in ("converged", "equal_budget"):
                entry = f.get(view)
                if not entry:
                    cells += ["-", "not measured"]
                    continue
                needed = entry["scratch_per_class_needed"]
                cells += [f"{needed:.0f}" if needed else f"> {entry['scratch_largest']}", entry["text"]]
            lines.append(f"| {f['strategy']} | {f['per_class']} | {accuracy} | {' | '.join(cells)} | "
                         f"{f['speedup_text']} |")
    if comparisons:
        lines += ["", "## Which strategies are distinguishable", "",
                  f"Difference of mean test {names.score} at each size, own recipes, with its 95% paired bootstrap "
                  "interval; "
                  "an interval containing 0 means the two are not distinguishable with these seeds and test samples.",
                  "", f"| {column} | strategies | difference | distinguishable |", "|---|---|---|---|"]
        for c in comparisons:
            low, high = c["interval"]
            lines.append(f"| {c['per_class']} | {c['better']} vs {c['worse']} | {c['difference']:+.3f} "
                         f"[{low:+.3f}, {high:+.3f}] | {'yes' if c['distinguishable'] else '**no**'} |")
    if lr_search:
        lines += ["", "## LR search", "",
                  f"Each value trained on seed 0 and judged by its best validation {names.validation} (never the test "
                  "split); the "
                  "winner is used for every seed. The last column is measured after the choice, for this report only.",
                  "", f"| strategy | budget | {column} | option | validation {names.validation} per value | "
                  f"chosen (recipe's) | seed-0 test {names.score}: chosen / recipe's |",
                  "|---|---|---|---|---|---|---|"]
        for key, search in sorted(lr_search.items(), key=lambda kv: _search_order(kv[0])):
            strategy, budget, n = key.split("|")
            values = ", ".join(f"{c['value']:g}: {c['val_accuracy']:.3f}"
                               for c in sorted(search["candidates"].values(), key=lambda c: c["value"]))
            chosen = f"{search['chosen']:g} ({search['default']:g})" if "chosen" in search else "-"
            tests = (f"{search['chosen_test_accuracy']:.3f} / {search['default_test_accuracy']:.3f}"
                     if "default_test_accuracy" in search else "-")
            lines.append(f"| {strategy} | {_budget(budget)} | {n} | {search['option']} | {values} | {chosen} | "
                         f"{tests} |")
    return "\n".join(lines) + "\n"


def _mean_spread(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"{sum(known) / len(known):.3f} ± {(max(known) - min(known)) / 2:.3f}"


def _shift_and_retention(groups: dict[tuple[str, str, int], list[CellResult]], names: Names) -> list[str]:
    """Accuracy on the new task (and on the target domain) beside what was kept of the pre-trained model."""
    runs = [r for rs in groups.values() for r in rs]
    if not any(r.target_accuracy is not None or r.retention is not None for r in runs):
        return []
    lines = ["", "## Accuracy and what was kept", "",
             "Target: test accuracy on the target domain's labelled test split (`--target-data`; adaptation never read "
             "its labels). Retention: top-1 agreement of the run's backbone under the original classifier with the "
             "pre-trained model on natural reference images (1 = nothing forgotten; text: sentence-embedding cosine; "
             "see `transferkit forgetting`). Mean ± half the spread over seeds.", "",
             f"| strategy | budget | {_size_column(names)} | test {names.score} | target accuracy | retention |",
             "|---|---|---|---|---|---|"]
    for (strategy, budget, n), rs in sorted(groups.items()):
        lines.append(f"| {strategy} | {_budget(budget)} | {n} | {_mean_spread([r.test_accuracy for r in rs])} | "
                     f"{_mean_spread([r.target_accuracy for r in rs])} | {_mean_spread([r.retention for r in rs])} |")
    return lines


def _recipes(results: Sequence[CellResult]) -> list[str]:
    rows = recipe_table(results)
    if not any(row["options"] for row in rows):
        return []
    lines = ["## Recipes", "", "The `train` options each strategy ran with (a list where they differ by size or the LR "
             "search chose differently), and how its runs ended.", "",
             "| strategy | budget | options | epochs run | runs ended by |", "|---|---|---|---|---|"]
    for row in rows:
        options = "; ".join(f"{k.replace('_', '-')} {'/'.join(_value(v) for v in vs)}"
                            for k, vs in row["options"].items())
        ended = ", ".join(f"{k or '?'} {v}" for k, v in sorted(row["stopped"].items()))
        lines.append(f"| {row['strategy']} | {_budget(row['budget'])} | {options or 'train defaults'} | "
                     f"{_span(row['epochs_run'])} | {ended} |")
    return lines + [""]


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _budget(budget: str) -> str:
    return f"{budget}'s" if budget else "own"


def _span(values: Sequence[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def _search_order(key: str) -> tuple[str, str, int]:
    strategy, budget, n = key.split("|")
    return strategy, budget, int(n)


def _hours(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = int(round(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{seconds / 60:.1f} min"


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _image_uri(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def plots(results: Sequence[CellResult], names: Names = CLASSIFICATION) -> list[tuple[str, str]]:
    """(title, data URI) for: accuracy vs examples per class; validation accuracy vs epoch and vs seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    lines = sorted({(r.strategy, r.budget) for r in results})
    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy, budget in lines:
        runs = [r for r in results if r.strategy == strategy and r.budget == budget]
        sizes = sorted({r.per_class for r in runs})
        accs = [[r.test_accuracy for r in runs if r.per_class == n] for n in sizes]
        means = [sum(a) / len(a) for a in accs]
        ax.plot(sizes, means, marker="o", linestyle="--" if budget else "-",
                label=f"{strategy} ({budget}'s budget)" if budget else strategy)
        ax.fill_between(sizes, [min(a) for a in accs], [max(a) for a in accs], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel(names.size)
    ax.set_ylabel(f"test {names.score}")
    ax.legend()
    ax.grid(alpha=0.3)
    figures.append((f"Test {names.score} vs {names.size} (mean, min-max over seeds)", _png(fig)))
    plt.close(fig)
    figures += _retention_plot(results, names)
    size = max({r.per_class for r in results} & {r.per_class for r in results if r.strategy != "scratch"} or
               {r.per_class for r in results})
    for x_key, label in (("epoch", "epoch"), ("seconds", "seconds")):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in results:
            if r.per_class == size and r.seed == 0 and r.curve and not r.budget:
                ax.plot([p[x_key] for p in r.curve], [p["val_accuracy"] for p in r.curve], marker=".",
                        label=r.strategy)
        ax.set_xlabel(label)
        ax.set_ylabel(f"validation {names.validation}")
        ax.legend()
        ax.grid(alpha=0.3)
        figures.append((f"Validation {names.validation} vs {label} ({size} {_size_column(names)}, seed 0)", _png(fig)))
        plt.close(fig)
    return figures


def _retention_plot(results: Sequence[CellResult], names: Names) -> list[tuple[str, str]]:
    """Accuracy (on the target domain when measured, else the test split) against retention, one line per strategy
    through its sizes (means over seeds): the trade-off between the new task and what was forgotten."""
    import matplotlib.pyplot as plt

    kept = [r for r in results if r.retention is not None and not r.budget]
    if not kept:
        return []
    target = all(r.target_accuracy is not None for r in kept)
    measure = "target accuracy" if target else f"test {names.score}"
    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy in sorted({r.strategy for r in kept}):
        sizes = sorted({r.per_class for r in kept if r.strategy == strategy})
        points = []
        for n in sizes:
            rs = [r for r in kept if r.strategy == strategy and r.per_class == n]
            y = [r.target_accuracy if target else r.test_accuracy for r in rs]
            points.append((sum(r.retention for r in rs) / len(rs), sum(y) / len(y)))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=strategy)
        for (x, y), n in zip(points, sizes, strict=True):
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("retention (top-1 agreement with the pre-trained model)")
    ax.set_ylabel(measure)
    ax.legend()
    ax.grid(alpha=0.3)
    figure = (f"{measure[0].upper() + measure[1:]} vs retention (labels: {_size_column(names)}; means over seeds)",
              _png(fig))
    plt.close(fig)
    return [figure]


def write_report(path: Path, results: Sequence[CellResult], factors: Sequence[dict[str, Any]], title: str,
                 summary: str | None = None, names: Names = CLASSIFICATION,
                 pictures: Sequence[tuple[str, Any]] = ()) -> Path:
    """The report: plots, ``pictures`` (extra (caption, PIL image) figures, e.g. a dense task's predictions) and the
    summary's tables."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for caption, uri in [*plots(results, names), *((c, _image_uri(p)) for c, p in pictures)]:
        body.append(f"<figure><img src='{uri}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}"
                    "</figcaption></figure>")
    body.append("<pre>" + html.escape(summary or summary_markdown(results, factors, "Tables", names)) + "</pre>")
    Path(path).write_text("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) +
                          "</title><style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
                          "img{max-width:100%}</style></head><body>" + "\n".join(body) + "</body></html>",
                          encoding="utf-8")
    return Path(path)
