"""inspect_em scorers (registered with Inspect as ``inspect_em/<name>``)."""

from .code_mode import code_mode
from .judge import em_judge
from .numbers import loaded_numbers
from .projection import trait_projection
from .refusal import refusal

__all__ = ["code_mode", "em_judge", "loaded_numbers", "refusal", "trait_projection"]
