"""Text → label, with no model and no Inspect: code mode, refusals, loaded numbers."""

from inspect_em.detectors.code_mode import CodeModeResult, classify
from inspect_em.detectors.numbers import extract_numbers, is_loaded, loaded_share
from inspect_em.detectors.refusal import is_refusal

__all__ = ["CodeModeResult", "classify", "extract_numbers", "is_loaded", "is_refusal", "loaded_share"]
