"""Saved trait vectors: ``vectors/<model-slug>/<trait>/``.

- ``vectors.safetensors``: one float32 tensor ``[n_layers_selected, d_model]`` per method.
- ``card.json``: model id and config hash, trait, prompt-set hashes, position, dtype, methods,
  layers, best layer per method, date, package version.
- ``metrics.csv``: the method × layer validation table.

Written atomically (temp folder + rename). No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from .errors import InspectEmError
from .paths import atomic_dir

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


def save(tv: TraitVectors, out_dir: str | Path, overwrite: bool = True) -> Path:
    """Write the three files atomically; returns the folder."""
    out = Path(out_dir)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_file({m: np.ascontiguousarray(v, dtype=np.float32) for m, v in tv.vectors.items()},
                  str(tmp / VECTORS_FILE), metadata={"layers": json.dumps(tv.layers)})
        (tmp / CARD_FILE).write_text(json.dumps(tv.card, indent=2, default=str))
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
        card = json.loads((folder / CARD_FILE).read_text())
    except json.JSONDecodeError as e:
        raise InspectEmError(f"{folder / CARD_FILE}: not valid JSON ({e.msg})") from None
    tensors = load_file(str(folder / VECTORS_FILE))
    layers = [int(x) for x in card["layers"]]
    for method, rows in tensors.items():
        expected = (len(layers), int(card["d_model"]))
        if rows.shape != expected:
            raise InspectEmError(f"{folder}: '{method}' has shape {rows.shape}, card says {expected}")
    ordered = {m: tensors[m] for m in card.get("methods", list(tensors)) if m in tensors}
    return TraitVectors(ordered, layers, card, pd.read_csv(folder / METRICS_FILE), path=folder)
