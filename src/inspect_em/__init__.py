"""inspect_em: detect Emergent Misalignment with Inspect, from outputs and activations."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inspect-em")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
