"""inspect_em solvers (registered with Inspect as ``inspect_em/<name>``)."""

from inspect_em.solvers.projections import generate_with_projections
from inspect_em.solvers.steer import steer

__all__ = ["generate_with_projections", "steer"]
