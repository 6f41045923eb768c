"""inspect_em solvers (registered with Inspect as ``inspect_em/<name>``)."""

from .projections import generate_with_projections
from .steer import steer

__all__ = ["generate_with_projections", "steer"]
