"""inspect_em tasks (registered with Inspect as ``inspect_em/<name>``)."""

from inspect_em.tasks.em_freeform import em_freeform
from inspect_em.tasks.refusal_contrast import refusal_contrast

__all__ = ["em_freeform", "refusal_contrast"]
