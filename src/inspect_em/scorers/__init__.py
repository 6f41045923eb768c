"""inspect_em scorers (registered with Inspect as ``inspect_em/<name>``)."""

from .code_mode import code_mode

__all__ = ["code_mode"]
