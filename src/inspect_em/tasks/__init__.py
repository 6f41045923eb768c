"""inspect_em tasks (registered with Inspect as ``inspect_em/<name>``)."""

from .em_freeform import em_freeform
from .refusal_contrast import refusal_contrast

__all__ = ["em_freeform", "refusal_contrast"]
