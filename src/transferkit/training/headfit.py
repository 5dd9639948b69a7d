"""Fit a linear head exactly on cached features: the convex logistic loss, solved with L-BFGS.

The L2 strength is chosen on the validation split (CLIP's linear-probe protocol sweeps it the same
way with scikit-learn), by validation cross-entropy: on small validation sets accuracy is too coarse and
noisy (it happily picks a heavily under-fitted head), while the log-loss is a proper scoring rule and also
yields a calibrated head for the fine-tuning stage of LP-FT. Features are standardised for conditioning
and the standardisation is folded back into the head's weights, so the result is an ordinary
``nn.Linear`` on raw features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

L2_GRID = (1e1, 1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


TOLERANCE_GRAD = 1e-6  # L-BFGS stops when every gradient entry of the objective is this small...
TOLERANCE_CHANGE = 1e-9  # ...or when the objective or the step changes less than this


@dataclass
class HeadFit:
    """The chosen fit: its L2 strength, metrics (cross-entropy without the penalty), the objective it minimised,
    and whether L-BFGS met its tolerance within ``max_iter`` iterations (``converged``); ``grid`` has one row per
    L2 strength tried, with the same fields."""

    l2: float
    val_accuracy: float
    val_loss: float
    train_accuracy: float
    train_loss: float
    grid: list[dict[str, float]]
    objective: float = float("nan")
    converged: bool = True
    iterations: int = 0


def fit_linear_head(linear: nn.Linear, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                    y_val: torch.Tensor, *, class_weights: torch.Tensor | None = None,
                    grid: tuple[float, ...] = L2_GRID, max_iter: int = 100, patience: int = 2) -> HeadFit:
    """Set ``linear`` to the L2-regularised multinomial logistic regression that does best on validation.

    Minimises ``mean CE(W x + b) + l2 / 2 * ||W||^2`` (on standardised ``x``; with ``class_weights`` the mean is
    weighted, as in ``nn.CrossEntropyLoss``; the bias is not penalised) for each ``l2`` in ``grid`` (strongest
    first, each warm-started from the previous), stopping after ``patience`` values without a lower validation
    cross-entropy. This is scikit-learn's ``LogisticRegression(C=1 / (l2 * n))`` on the same standardised
    features, ``n`` the number (or total weight) of the training samples. A fit that stops at ``max_iter``
    without meeting L-BFGS's tolerance is reported (``converged`` False, and a warning for the chosen one).
    """
    x_train, x_val = x_train.float(), x_val.float()
    mean = x_train.mean(dim=0)
    std = x_train.std(dim=0).clamp_min(1e-6)
    z_train, z_val = (x_train - mean) / std, (x_val - mean) / std
    classes, dim = linear.out_features, x_train.shape[1]
    weight = torch.zeros(classes, dim, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights)
    best, best_params, results, bad = None, None, [], 0
    max_eval = max_iter * 5 // 4  # torch's default for LBFGS
    for l2 in grid:
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, max_eval=max_eval,
                                      line_search_fn="strong_wolfe", tolerance_grad=TOLERANCE_GRAD,
                                      tolerance_change=TOLERANCE_CHANGE, history_size=20)

        def closure(l2=l2, optimizer=optimizer):
            optimizer.zero_grad()
            loss = loss_fn(z_train @ weight.T + bias, y_train) + 0.5 * l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        objective = float(closure().detach())  # at the final parameters, with their gradient
        gradient = max(float(weight.grad.abs().max()), float(bias.grad.abs().max()))
        state = optimizer.state[weight]  # LBFGS keeps its counters with the first parameter
        iterations, evaluations = int(state.get("n_iter", 0)), int(state.get("func_evals", 0))
        stopped_by_limit = iterations >= max_iter or evaluations >= max_eval
        with torch.no_grad():
            train_logits, val_logits = z_train @ weight.T + bias, z_val @ weight.T + bias
            row = {"l2": l2, "train_loss": float(nn.functional.cross_entropy(train_logits, y_train)),
                   "train_accuracy": float((train_logits.argmax(1) == y_train).float().mean()),
                   "val_loss": float(nn.functional.cross_entropy(val_logits, y_val)),
                   "val_accuracy": float((val_logits.argmax(1) == y_val).float().mean()),
                   "objective": objective, "gradient": gradient, "iterations": iterations,
                   "converged": not stopped_by_limit or gradient <= TOLERANCE_GRAD}
        results.append(row)
        if best is None or row["val_loss"] < best["val_loss"]:
            best, best_params, bad = row, (weight.detach().clone(), bias.detach().clone()), 0
        else:
            bad += 1
            if bad >= patience:
                break
    w, b = best_params
    with torch.no_grad():
        linear.weight.copy_((w / std).to(linear.weight))
        linear.bias.copy_((b - (w / std) @ mean).to(linear.bias))
    logger.info("Exact head fit (L-BFGS): L2 %.0e chosen by validation loss (%.4f; accuracy %.4f) from %s",
                best["l2"], best["val_loss"], best["val_accuracy"],
                ", ".join(f"{r['l2']:.0e}: {r['val_loss']:.3f}" for r in results))
    if not best["converged"]:
        logger.warning("Exact head fit: L-BFGS did not converge for the chosen L2 %.0e: it stopped after %d "
                       "iterations with the largest gradient entry at %.1e (tolerance %.0e); the head is close to, "
                       "not at, the optimum. A stronger L2 or more iterations (max_iter) converge.", best["l2"],
                       best["iterations"], best["gradient"], TOLERANCE_GRAD)
    return HeadFit(best["l2"], best["val_accuracy"], best["val_loss"], best["train_accuracy"], best["train_loss"],
                   results, best["objective"], best["converged"], best["iterations"])
