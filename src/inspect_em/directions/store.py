"""Saved trait vectors: ``vectors/<model-slug>/<trait>/``.

- ``vectors.safetensors``: one float32 tensor ``[n_layers_selected, d_model]`` per method.
- ``card.json``: model id and config hash, trait, prompt-set hashes, position, dtype, methods,
  layers, best layer per method, date, package version.
- ``metrics.csv``: the method × layer validation table.

Written atomically (temp folder + rename) through :func:`inspect_em.util.paths.atomic_output`, so an
existing folder is replaced only when an earlier ``extract`` wrote it. ``card.json`` is strict JSON
(non-finite numbers are written as null). No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load_file, save_file

from inspect_em.errors import InspectEmError
from inspect_em.util.paths import atomic_output, check_output, user_path

FORMAT_VERSION = 1
VECTORS_FILE = "vectors.safetensors"
CARD_FILE = "card.json"
METRICS_FILE = "metrics.csv"


# ---------------------------------------------------------------- the card, typed


@dataclass(frozen=True)
class CalibrationPoint:
    """One point of a steering sweep's calibration curve: steering ``alpha``, the projection
    ``shift`` it caused at the calibration layer, and the behaviour ``rate`` with its 95% interval."""

    alpha: float
    shift: float
    rate: float
    low: float
    high: float

    def to_list(self) -> list[float]:
        """The card's JSON form: ``[alpha, shift, rate, low, high]``."""
        return [self.alpha, self.shift, self.rate, self.low, self.high]

    @classmethod
    def of(cls, item: Sequence[float] | Mapping[str, float]) -> CalibrationPoint:
        if isinstance(item, Mapping):
            return cls(*(float(item[k]) for k in ("alpha", "shift", "rate", "low", "high")))
        values = [float(x) if x is not None else math.nan for x in item]
        return cls(*(values + [math.nan] * (5 - len(values)))[:5])


@dataclass(frozen=True)
class Calibration:
    """How far steering moves the projection and what behaviour that gives: the curve of a
    ``steer-sweep --update-card``, read at ``layer`` (where the shifts were measured)."""

    layer: int | None
    points: tuple[CalibrationPoint, ...]
    behaviour: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "points": [p.to_list() for p in self.points], "behaviour": self.behaviour}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        return cls(data.get("layer"), tuple(CalibrationPoint.of(p) for p in data.get("points") or ()),
                   data.get("behaviour"))


CARD_FIELDS = ("format_version", "trait", "description", "model", "model_class", "model_type", "config_hash",
               "n_layers", "d_model", "layers", "position", "hook_point", "hook_point_meaning", "unit_norm",
               "mean_diff_norm", "model_dtype", "activation_dtype", "methods", "best_layer", "layer_choice", "best",
               "n_fit", "n_test", "n_ood", "nulls", "prompt_sha256", "trait_source", "system", "positive_system",
               "negative_system", "settings", "created", "inspect_em_version", "responses", "causal", "from_log")
REQUIRED_CARD_KEYS = ("trait", "model", "n_layers", "d_model", "layers", "position", "best_layer")


@dataclass
class Card:
    """A vector folder's provenance and choices (``card.json``), typed. Reads every card format
    inspect_em has written (fields an older card lacks are None); keys it does not know are kept
    in ``extra`` and written back, so a card round-trips unchanged.

    Attributes:
        trait, model, config_hash, n_layers, d_model: what the vectors are of, and for.
        layers: the model layers the vectors' rows are; position: where activations were read.
        best_layer: method → the layer chosen for it (``layer_choice`` says how).
        best: method → its metrics at that layer; mean_diff_norm: per saved layer, the fit mean
            difference's norm (steering's ``alpha = 1``).
        settings: what makes two extractions the same (the output folder's re-run identity).
        causal: what ``steer-sweep --update-card`` recorded (see :attr:`calibration`).
        from_log: for a direction fitted on logs' own answers (``extract --from-log``): the logs and
            their sha256, the two predicates, per-log counts and the questions of each split.
    """

    trait: str
    model: str
    n_layers: int
    d_model: int
    layers: list[int]
    position: str
    best_layer: dict[str, int]
    format_version: int | None = None
    description: str | None = None
    model_class: str | None = None
    model_type: str | None = None
    config_hash: str | None = None
    hook_point: str | None = None
    hook_point_meaning: str | None = None
    unit_norm: bool | None = None
    mean_diff_norm: list[float] | None = None
    model_dtype: str | None = None
    activation_dtype: str | None = None
    methods: list[str] | None = None
    layer_choice: str | None = None
    best: dict[str, dict[str, Any]] | None = None
    n_fit: list[int] | None = None
    n_test: list[int] | None = None
    n_ood: list[int] | None = None
    nulls: dict[str, Any] | None = None
    prompt_sha256: dict[str, str] | None = None
    trait_source: str | None = None
    system: str | None = None
    positive_system: str | None = None
    negative_system: str | None = None
    settings: dict[str, Any] | None = None
    created: str | None = None
    inspect_em_version: str | None = None
    responses: dict[str, Any] | None = None
    causal: dict[str, Any] | None = None
    from_log: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str | Path = "card.json") -> Card:
        """A card from its JSON object; one-line errors for missing or malformed required fields."""
        if not isinstance(data, Mapping):
            raise InspectEmError(f"{where}: expected a JSON object")
        missing = [k for k in REQUIRED_CARD_KEYS if k not in data]
        if missing:
            raise InspectEmError(f"{where}: missing key '{missing[0]}' (not a complete vector card)")
        try:
            layers = [int(x) for x in data["layers"]]
        except (TypeError, ValueError):
            raise InspectEmError(f"{where}: 'layers' must be a list of layer numbers") from None
        if not isinstance(data["best_layer"], Mapping):
            raise InspectEmError(f"{where}: 'best_layer' must map methods to layers")
        known = {k: data[k] for k in CARD_FIELDS if k in data}
        try:
            known.update(n_layers=int(data["n_layers"]), d_model=int(data["d_model"]), layers=layers,
                         best_layer={str(m): int(v) for m, v in data["best_layer"].items()})
        except (TypeError, ValueError):
            raise InspectEmError(f"{where}: 'n_layers', 'd_model' and 'best_layer' must be whole numbers") from None
        return cls(**known, extra={k: v for k, v in data.items() if k not in CARD_FIELDS})

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (fields this card does not have are left out)."""
        out = {k: getattr(self, k) for k in CARD_FIELDS}
        out = {k: v for k, v in out.items() if v is not None or k in ("system",)}
        return {**out, **self.extra}

    @property
    def calibration(self) -> Calibration | None:
        """The one-layer steering calibration, if a sweep recorded one."""
        causal = self.causal or {}
        points = causal.get("calibration")
        if not points:
            return None
        layer = causal.get("projection_layer", causal.get("calibration_layer"))  # older cards: the steered layer
        return Calibration(layer, tuple(CalibrationPoint.of(p) for p in points),
                           (causal.get("add") or {}).get("behaviour"))

    def calibrated_alpha(self, method: str = "mean_diff") -> float | None:
        """The steering alpha a sweep calibrated at this card's ``method`` layer (None when the sweep
        calibrated another layer, or found none)."""
        causal = self.causal or {}
        if causal.get("calibration_layer") != self.best_layer.get(method):
            return None
        value = causal.get("calibrated_alpha")
        return float(value) if value is not None else None

    def with_causal(self, causal: dict[str, Any]) -> Card:
        """A copy with a new causal section."""
        return replace(self, causal=causal)

    def summary(self, path: str | Path | None) -> CardSummary:
        """What a projection score records about these vectors (small: it goes into every sample)."""
        return CardSummary(str(path) if path is not None else None, self.position, dict(self.best_layer),
                           self.layer_choice, self.config_hash, self.calibration)


@dataclass(frozen=True)
class CardSummary:
    """The part of a card a projection score records in the log, and reports read back."""

    path: str | None
    position: str | None
    best_layer: dict[str, int]
    layer_choice: str | None = None
    config_hash: str | None = None
    calibration: Calibration | None = None

    def layer(self, method: str = "mean_diff") -> int | None:
        """The card's chosen layer for ``method``."""
        value = self.best_layer.get(method)
        return int(value) if value is not None else None

    def to_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "position": self.position, "best_layer": self.best_layer,
               "layer_choice": self.layer_choice, "config_hash": self.config_hash}
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CardSummary:
        """From a log's score metadata (older logs lack some fields)."""
        calibration = data.get("calibration")
        return cls(data.get("path"), data.get("position"),
                   {str(k): int(v) for k, v in (data.get("best_layer") or {}).items() if v is not None},
                   data.get("layer_choice"), data.get("config_hash"),
                   Calibration.from_dict(calibration) if isinstance(calibration, Mapping) else None)


def read_card(folder: str | Path) -> Card:
    """The card of a vector folder alone (no vectors loaded); one-line errors."""
    path = Path(folder) / CARD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InspectEmError(f"{Path(folder)}: missing {CARD_FILE} (not a vector folder, or incomplete)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InspectEmError(f"{path}: not valid JSON ({getattr(e, 'msg', e)})") from None
    return Card.from_dict(data, path)


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
        card: provenance and choices (:class:`Card`).
        metrics: method × layer validation table.
    """

    vectors: dict[str, np.ndarray]
    layers: list[int]
    card: Card
    metrics: pd.DataFrame
    path: Path | None = None

    @property
    def trait(self) -> str:
        return self.card.trait

    @property
    def methods(self) -> list[str]:
        return list(self.vectors)

    @property
    def d_model(self) -> int:
        return self.card.d_model

    @property
    def n_layers(self) -> int:
        return self.card.n_layers

    def best_layer(self, method: str) -> int:
        return self.card.best_layer[self._method(method)]

    def vector(self, method: str, layer: int) -> np.ndarray:
        """Unit vector ``[d_model]`` of ``method`` at model layer ``layer``."""
        rows = self.vectors[self._method(method)]
        if layer not in self.layers:
            raise InspectEmError(f"trait {self.trait}: no vector at layer {layer} (saved layers: {self.layers})")
        return rows[self.layers.index(layer)]

    def mean_diff_norm(self, layer: int) -> float:
        """Norm of the fit mean difference (positive − negative) at ``layer``, in projection units."""
        norms = self.card.mean_diff_norm
        if norms is not None and len(norms) == len(self.layers) and layer in self.layers:
            return float(norms[self.layers.index(layer)])
        rows = self.metrics[self.metrics["layer"] == layer] if "mean_diff_norm" in self.metrics else None
        if rows is None or rows.empty:
            raise InspectEmError(f"trait {self.trait}: no mean-difference norm at layer {layer}")
        return float(rows["mean_diff_norm"].iloc[0])

    def card_layer_metrics(self) -> pd.DataFrame:
        """Each method's validation at its card layer: layer, test / OOD AUROC, test Cohen's d and the
        two nulls' 95th percentiles of d (label-shuffled refits, random directions), one row per method."""
        columns = ["test_auroc", "ood_auroc", "test_cohens_d", "null_perm_d_p95", "null_random_d_p95"]
        rows = []
        for method in self.methods:
            layer = self.best_layer(method)
            row = self.metrics[(self.metrics["method"] == method) & (self.metrics["layer"] == layer)]
            values = {c: float(row[c].iloc[0]) if c in row and not row.empty else float("nan") for c in columns}
            rows.append({"method": method, "layer": layer, **values})
        return pd.DataFrame(rows)

    def _method(self, method: str) -> str:
        if method not in self.vectors:
            raise InspectEmError(f"trait {self.trait}: no '{method}' vectors (saved: {', '.join(self.vectors)})")
        return method

    def check_model(self, n_layers: int, d_model: int, source: str = "model") -> None:
        """Refuse a model whose shape differs from the one the vectors came from."""
        where = f"{self.path or self.trait}"
        if d_model != self.d_model:
            raise InspectEmError(f"{where}: vectors have d_model {self.d_model} but the {source} has {d_model}")
        if n_layers != self.n_layers:
            raise InspectEmError(
                f"{where}: vectors come from a {self.n_layers}-layer model but the {source} has {n_layers}"
            )


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


def _settings(card: Card) -> dict[str, Any]:
    """What makes a vector folder "the same extraction" (its output marker's config)."""
    data = card.to_dict()
    return json_safe(card.settings or {k: v for k, v in data.items() if k != "created"})


def check_save(tv: TraitVectors, out_dir: str | Path, *, force: bool = False,
               inputs: Sequence[str | Path] = ()) -> Path:
    """The checks :func:`save` makes before writing, alone: run them before long work whose result
    will be saved there (``steer-sweep --update-card``)."""
    return check_output(out_dir, command="extract", config=_settings(tv.card), inputs=inputs, force=force,
                        legacy_marker=CARD_FILE)


def save(tv: TraitVectors, out_dir: str | Path, *, force: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """Write the three files atomically; returns the folder.

    An existing folder is replaced only when an earlier ``extract`` wrote it with the same
    settings (the card's ``settings``), or with ``force``; see :mod:`inspect_em.util.paths`.
    """
    out = Path(out_dir)
    card = tv.card.to_dict()
    with atomic_output(out, command="extract", config=_settings(tv.card), inputs=inputs, force=force,
                       legacy_marker=CARD_FILE) as tmp:
        save_file({m: np.ascontiguousarray(v, dtype=np.float32) for m, v in tv.vectors.items()},
                  str(tmp / VECTORS_FILE), metadata={"layers": json.dumps(tv.layers)})
        (tmp / CARD_FILE).write_text(json.dumps(json_safe(card), indent=2, default=str, allow_nan=False))
        tv.metrics.to_csv(tmp / METRICS_FILE, index=False, float_format="%.6g")
    tv.path = out
    return out


def check_finite(rows: np.ndarray, what: str, layers: Sequence[int]) -> None:
    """Refuse vectors ``[layers, d_model]`` holding NaN or infinity (one line naming the layer)."""
    bad = ~np.isfinite(np.asarray(rows, dtype=np.float64)).all(axis=-1)
    if bad.any():
        at = [layers[int(i)] for i in np.flatnonzero(bad)]
        raise InspectEmError(f"{what}: non-finite values (NaN or inf) at layer(s) {', '.join(map(str, at[:5]))}"
                             f"{' ...' if len(at) > 5 else ''}; re-extract or re-import these vectors")


def load(path: str | Path) -> TraitVectors:
    """Read a ``vectors/<model>/<trait>/`` folder; one-line errors for anything missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise InspectEmError(f"{folder}: trait-vector folder not found")
    for name in (VECTORS_FILE, CARD_FILE, METRICS_FILE):
        if not (folder / name).is_file():
            raise InspectEmError(f"{folder}: missing {name} (not a trait-vector folder, or incomplete)")
    card = read_card(folder)
    try:
        tensors = load_file(str(folder / VECTORS_FILE))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise InspectEmError(f"{folder / VECTORS_FILE}: cannot read ({str(e).splitlines()[0][:100]})") from None
    layers = card.layers
    for method, rows in tensors.items():
        expected = (len(layers), card.d_model)
        if rows.shape != expected:
            raise InspectEmError(f"{folder}: '{method}' has shape {rows.shape}, card says {expected}")
        check_finite(rows, f"{folder / VECTORS_FILE}: '{method}'", layers)
    ordered = {m: tensors[m] for m in (card.methods or list(tensors)) if m in tensors}
    try:
        metrics = pd.read_csv(folder / METRICS_FILE)
    except (ValueError, UnicodeDecodeError) as e:
        raise InspectEmError(f"{folder / METRICS_FILE}: cannot read ({str(e).splitlines()[0][:100]})") from None
    return TraitVectors(ordered, layers, card, metrics, path=folder)


VECTORS_ENV = "INSPECT_EM_VECTORS"


def shipped_vectors() -> Path:
    """The vectors shipped with the package (package data; ``vectors/`` in a checkout links here)."""
    from importlib.resources import files

    return Path(str(files("inspect_em") / "resources" / "vectors"))


def search_roots() -> list[Path]:
    """Where saved vectors are looked up: ``$INSPECT_EM_VECTORS`` (``:``-separated), ``./vectors``
    of the shell's directory, and the vectors shipped with the package (found in an installed
    package too, from any folder)."""
    import os

    roots = [Path(p).expanduser() for p in os.environ.get(VECTORS_ENV, "").split(os.pathsep) if p]
    shell = os.environ.get("PWD")
    roots += [Path(shell) / "vectors"] if shell else []
    roots += [Path.cwd() / "vectors", shipped_vectors()]
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
                card = read_card(card_file.parent)
            except (OSError, InspectEmError):
                continue
            if card.trait == trait and card.config_hash == config_hash_value and (
                    position is None or card.position == position):
                found.append(card_file.parent)
    found.sort(key=lambda p: (p.name != trait, str(p)))
    return found[0] if found else None


def parse_vector_paths(vectors: str | Sequence[str] | None) -> list[Path]:
    """``"a,b"`` or ``["a", "b"]`` → folder paths (each a ``vectors/<model>/<trait>`` folder)."""
    if vectors is None or (isinstance(vectors, str) and not vectors.strip()):
        raise InspectEmError("trait_projection needs vectors= (a vectors/<model>/<trait> folder, or several)")
    items = vectors.split(",") if isinstance(vectors, str) else list(vectors)
    return [user_path(str(v).strip()) for v in items if str(v).strip()]
