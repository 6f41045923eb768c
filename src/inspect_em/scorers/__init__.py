"""inspect_em scorers (registered with Inspect as ``inspect_em/<name>``)."""

from inspect_em.scorers.code_mode import code_mode
from inspect_em.scorers.judge import em_judge
from inspect_em.scorers.numbers import loaded_numbers
from inspect_em.scorers.projection import trait_projection
from inspect_em.scorers.refusal import refusal

__all__ = ["code_mode", "em_judge", "loaded_numbers", "refusal", "trait_projection"]
