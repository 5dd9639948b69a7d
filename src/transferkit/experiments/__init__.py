"""Experiments over many runs: ``compare`` (strategies x data sizes x seeds) and its report; ``advise`` (measure
the data against the model, recommend a strategy)."""

from .advise import Advice, Measurements, advise, measure, recommend
from .compare import compare
from .grid import Cell, CellResult, derived_factors, examples_needed, grid, ranking, run_grid

__all__ = ["Advice", "Cell", "CellResult", "Measurements", "advise", "compare", "derived_factors", "examples_needed",
           "grid", "measure", "ranking", "recommend", "run_grid"]
