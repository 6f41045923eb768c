"""Inspect registry entry point (``[project.entry-points.inspect_ai]``): importing this module
registers inspect_em's tasks, scorers and solvers as ``inspect_em/<name>``."""

# ruff: noqa: F401
from .scorers import code_mode
from .tasks import em_freeform
