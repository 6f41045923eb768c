"""inspect_em: detect Emergent Misalignment with Inspect, from outputs and activations.

The tasks, scorers and solvers are registered with Inspect as ``inspect_em/<name>``; the Python API is
importable from here. Importing the package loads neither Inspect, torch nor transformers: every name
is imported on first use (``inspect_em.TraitVectors`` loads the vector store then), so the
``inspect-em`` command starts fast.

    from inspect_em import em_freeform, load_vectors, extract_trait_vectors, load_samples, compare
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from inspect_em._version import __version__
from inspect_em.errors import InspectEmError

if TYPE_CHECKING:  # the tasks are exported (lazily, below): importing Inspect here would slow every command
    from inspect_em.tasks import em_freeform as em_freeform
    from inspect_em.tasks import refusal_contrast as refusal_contrast

# public name -> (module, attribute), imported when first used
_LAZY: dict[str, tuple[str, str]] = {
    # tasks
    "em_freeform": ("inspect_em.tasks", "em_freeform"),
    "refusal_contrast": ("inspect_em.tasks", "refusal_contrast"),
    # scorers and solvers
    "code_mode": ("inspect_em.scorers", "code_mode"),
    "em_judge": ("inspect_em.scorers", "em_judge"),
    "loaded_numbers": ("inspect_em.scorers", "loaded_numbers"),
    "refusal": ("inspect_em.scorers", "refusal"),
    "trait_projection": ("inspect_em.scorers", "trait_projection"),
    "steer": ("inspect_em.solvers", "steer"),
    # directions
    "TraitVectors": ("inspect_em.directions.store", "TraitVectors"),
    "Card": ("inspect_em.directions.store", "Card"),
    "Calibration": ("inspect_em.directions.store", "Calibration"),
    "load_vectors": ("inspect_em.directions.store", "load"),
    "load_trait": ("inspect_em.directions.traits", "load_trait"),
    # runs
    "extract_trait_vectors": ("inspect_em.runs.extract", "extract_trait_vectors"),
    "finetune": ("inspect_em.runs.finetune", "finetune"),
    "screen": ("inspect_em.runs.screening", "screen"),
    "run_sweep": ("inspect_em.runs.sweep", "run_sweep"),
    # analysis
    "load_samples": ("inspect_em.analysis.logs", "load_samples"),
    "compare": ("inspect_em.analysis.compare", "compare"),
    "write_report": ("inspect_em.analysis.report", "write_report"),
}

__all__ = ["InspectEmError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'inspect_em' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
