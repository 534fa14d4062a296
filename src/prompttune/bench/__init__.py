"""The benchmark runner: grids of methods x tasks x shots x seeds x models, a SQLite store, reports."""

from .grid import Cell, Grid, MethodSpec, load_grid
from .report import Report, build_report, write_report
from .runner import BenchSummary, run_cell, run_grid
from .store import ResultStore

__all__ = ["BenchSummary", "Cell", "Grid", "MethodSpec", "Report", "ResultStore", "build_report", "load_grid",
           "run_cell", "run_grid", "write_report"]
