"""The installed package's version (a leaf: the package root imports the tasks, so lower layers read
the version here, not from ``inspect_em``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inspect-em")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"
