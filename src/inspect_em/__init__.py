"""inspect_em: detect Emergent Misalignment with Inspect, from outputs and activations.

The tasks are importable from here (``from inspect_em import em_freeform``) and registered with
Inspect as ``inspect_em/<name>``; importing this package loads neither torch nor transformers.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inspect-em")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

from .tasks import em_freeform, refusal_contrast  # noqa: E402

__all__ = ["__version__", "em_freeform", "refusal_contrast"]
