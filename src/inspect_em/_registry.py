"""Inspect registry entry point (``[project.entry-points.inspect_ai]``): importing this module
registers inspect_em's tasks, scorers and solvers as ``inspect_em/<name>``.

Importing it is light: torch, transformers and pandas load only when a task or scorer that
needs them runs (``inspect score --scorer inspect_em/code_mode`` on an API model's log never
loads them).
"""

# ruff: noqa: F401
from inspect_em.scorers import code_mode, em_judge, loaded_numbers, refusal, trait_projection
from inspect_em.solvers import steer
from inspect_em.tasks import em_freeform, refusal_contrast
