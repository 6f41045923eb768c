"""Inspect registry entry point (``[project.entry-points.inspect_ai]``): importing this module
registers inspect_em's tasks and scorers as ``inspect_em/<name>``."""

# ruff: noqa: F401
from .scorers import code_mode, em_judge, refusal, trait_projection
from .tasks import em_freeform, refusal_contrast
