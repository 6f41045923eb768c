"""inspect_em tasks (registered with Inspect as ``inspect_em/<name>``)."""

from .em_freeform import em_freeform

__all__ = ["em_freeform"]
