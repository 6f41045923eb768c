"""Saved trait vectors: ``vectors/<model-slug>/<trait>/``.

- ``vectors.safetensors``: one float32 tensor ``[n_layers_selected, d_model]`` per method.
- ``card.json``: model id and config hash, trait, prompt-set hashes, position, dtype, methods,
  layers, best layer per method, date, package version.
- ``metrics.csv``: the method × layer validation table.

Written atomically (temp folder + rename) through :func:`inspect_em.paths.atomic_output`, so an
existing folder is replaced only when an earlier ``extract`` wrote it. ``card.json`` is strict JSON
(non-finite numbers are written as null). No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from .errors import InspectEmError
from .paths import atomic_output

FORMAT_VERSION = 1
VECTORS_FILE = "vectors.safetensors"
CARD_FILE = "card.json"
METRICS_FILE = "metrics.csv"


def model_slug(model_id: str) -> str:
    """A folder name for a model: the last path part of a local folder, ``org--name`` for hub ids."""
    path = Path(model_id)
    name = path.name if path.exists() else model_id.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def config_hash(config: Any) -> str:
    """sha256 (first 16 hex) of the architecture-defining fields of a transformers config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    fields = {k: getattr(text, k, None) for k in (
        "model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
        "num_key_value_heads", "vocab_size", "rms_norm_eps", "tie_word_embeddings")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TraitVectors:
    """Trait directions for several methods at several layers, with their card and metrics.

    Attributes:
        vectors: method → float32 ``[len(layers), d_model]`` (unit rows).
        layers: the model layers the rows correspond to.
        card: provenance (see module docstring).
        metrics: method × layer validation table.
    """

    vectors: dict[str, np.ndarray]
    layers: list[int]
    card: dict[str, Any]
    metrics: pd.DataFrame
    path: Path | None = None

    @property
    def trait(self) -> str:
        return str(self.card["trait"])

    @property
    def methods(self) -> list[str]:
        return list(self.vectors)

    @property
    def d_model(self) -> int:
        return int(self.card["d_model"])

    def best_layer(self, method: str) -> int:
        return int(self.card["best_layer"][self._method(method)])

    def vector(self, method: str, layer: int) -> np.ndarray:
        """Unit vector ``[d_model]`` of ``method`` at model layer ``layer``."""
        rows = self.vectors[self._method(method)]
        if layer not in self.layers:
            raise InspectEmError(f"trait {self.trait}: no vector at layer {layer} (saved layers: {self.layers})")
        return rows[self.layers.index(layer)]

    def mean_diff_norm(self, layer: int) -> float:
        """Norm of the fit mean difference (positive − negative) at ``layer``, in projection units."""
        norms = self.card.get("mean_diff_norm")
        if isinstance(norms, list) and len(norms) == len(self.layers) and layer in self.layers:
            return float(norms[self.layers.index(layer)])
        rows = self.metrics[self.metrics["layer"] == layer] if "mean_diff_norm" in self.metrics else None
        if rows is None or rows.empty:
            raise InspectEmError(f"trait {self.trait}: no mean-difference norm at layer {layer}")
        return float(rows["mean_diff_norm"].iloc[0])

    def _method(self, method: str) -> str:
        if method not in self.vectors:
            raise InspectEmError(f"trait {self.trait}: no '{method}' vectors (saved: {', '.join(self.vectors)})")
        return method

    def check_model(self, n_layers: int, d_model: int, source: str = "model") -> None:
        """Refuse a model whose shape differs from the one the vectors came from."""
        where = f"{self.path or self.trait}"
        if d_model != self.d_model:
            raise InspectEmError(f"{where}: vectors have d_model {self.d_model} but the {source} has {d_model}")
        if n_layers != int(self.card["n_layers"]):
            raise InspectEmError(
                f"{where}: vectors come from a {self.card['n_layers']}-layer model but the {source} has {n_layers}"
            )


REQUIRED_CARD_KEYS = ("trait", "model", "n_layers", "d_model", "layers", "position", "best_layer")


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/±inf float replaced by None (strict JSON for every reader)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def save(tv: TraitVectors, out_dir: str | Path, *, force: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """Write the three files atomically; returns the folder.

    An existing folder is replaced only when an earlier ``extract`` wrote it with the same
    settings (``card["settings"]``), or with ``force``; see :mod:`inspect_em.paths`.
    """
    out = Path(out_dir)
    settings = tv.card.get("settings") or {k: v for k, v in tv.card.items() if k != "created"}
    with atomic_output(out, command="extract", config=json_safe(settings), inputs=inputs, force=force,
                       legacy_marker=CARD_FILE) as tmp:
        save_file({m: np.ascontiguousarray(v, dtype=np.float32) for m, v in tv.vectors.items()},
                  str(tmp / VECTORS_FILE), metadata={"layers": json.dumps(tv.layers)})
        (tmp / CARD_FILE).write_text(json.dumps(json_safe(tv.card), indent=2, default=str, allow_nan=False))
        tv.metrics.to_csv(tmp / METRICS_FILE, index=False, float_format="%.6g")
    tv.path = out
    return out


def load(path: str | Path) -> TraitVectors:
    """Read a ``vectors/<model>/<trait>/`` folder; one-line errors for anything missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise InspectEmError(f"{folder}: trait-vector folder not found")
    for name in (VECTORS_FILE, CARD_FILE, METRICS_FILE):
        if not (folder / name).is_file():
            raise InspectEmError(f"{folder}: missing {name} (not a trait-vector folder, or incomplete)")
    try:
        card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InspectEmError(f"{folder / CARD_FILE}: not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(card, dict):
        raise InspectEmError(f"{folder / CARD_FILE}: expected a JSON object")
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise InspectEmError(f"{folder / CARD_FILE}: missing key '{missing[0]}' (not a complete vector card)")
    try:
        tensors = load_file(str(folder / VECTORS_FILE))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise InspectEmError(f"{folder / VECTORS_FILE}: cannot read ({str(e).splitlines()[0][:100]})") from None
    try:
        layers = [int(x) for x in card["layers"]]
    except (TypeError, ValueError):
        raise InspectEmError(f"{folder / CARD_FILE}: 'layers' must be a list of layer numbers") from None
    for method, rows in tensors.items():
        expected = (len(layers), int(card["d_model"]))
        if rows.shape != expected:
            raise InspectEmError(f"{folder}: '{method}' has shape {rows.shape}, card says {expected}")
    ordered = {m: tensors[m] for m in card.get("methods", list(tensors)) if m in tensors}
    try:
        metrics = pd.read_csv(folder / METRICS_FILE)
    except (ValueError, UnicodeDecodeError) as e:
        raise InspectEmError(f"{folder / METRICS_FILE}: cannot read ({str(e).splitlines()[0][:100]})") from None
    return TraitVectors(ordered, layers, card, metrics, path=folder)


VECTORS_ENV = "INSPECT_EM_VECTORS"


def search_roots() -> list[Path]:
    """Where shipped/saved vectors are looked up: ``$INSPECT_EM_VECTORS`` (``:``-separated),
    ``./vectors`` of the shell's directory, and the ``vectors/`` folder of a source checkout."""
    import os

    roots = [Path(p).expanduser() for p in os.environ.get(VECTORS_ENV, "").split(os.pathsep) if p]
    shell = os.environ.get("PWD")
    roots += [Path(shell) / "vectors"] if shell else []
    roots += [Path.cwd() / "vectors", Path(__file__).resolve().parents[2] / "vectors"]
    unique: list[Path] = []
    for root in roots:
        if root.is_dir() and root.resolve() not in [u.resolve() for u in unique]:
            unique.append(root)
    return unique


def find_vectors(trait: str, config_hash_value: str, position: str | None = None) -> Path | None:
    """A saved ``<root>/<model>/<trait*>`` folder whose card matches the trait and the model's
    config hash (and ``position`` when given); the trait's own folder name is preferred."""
    found: list[Path] = []
    for root in search_roots():
        for card_file in sorted(root.glob(f"*/{trait}*/{CARD_FILE}")):
            try:
                card = json.loads(card_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if card.get("trait") == trait and card.get("config_hash") == config_hash_value and (
                    position is None or card.get("position") == position):
                found.append(card_file.parent)
    found.sort(key=lambda p: (p.name != trait, str(p)))
    return found[0] if found else None
