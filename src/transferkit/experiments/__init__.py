"""Experiments over many runs: ``compare`` (strategies x data sizes x seeds) and its report."""

from .compare import Cell, CellResult, compare, derived_factors, examples_needed, grid, run_grid

__all__ = ["Cell", "CellResult", "compare", "derived_factors", "examples_needed", "grid", "run_grid"]
