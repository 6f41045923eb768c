"""Vector folders to and from other tools' formats.

- repeng / llama.cpp control vectors (GGUF, ``general.architecture = controlvector``): one F32
  tensor ``direction.N`` per layer with ``controlvector.model_hint`` and
  ``controlvector.layer_count``, in repeng's numbering (``direction.N`` steers the output of
  decoder block ``N``, 0-based, which is our layer ``N``; llama.cpp reads no ``direction.0``, so
  block 0 is left out). Each direction is the unit vector times the layer's fit mean-difference
  norm (``scale="mean_diff"``, so ``--control-vector-scaled file:a`` adds what our steering adds
  with ``alpha = a``), or the unit vector (``scale="unit"``).
- persona_vectors ``.pt``: a ``[n_layers + 1, d_model]`` float tensor whose row ``l`` is the mean
  difference in ``hidden_states[l]`` (row 0 the embeddings; row ``L + 1`` the output of block
  ``L``). Export writes the mean differences (unit vector × norm; row 0 zeros); import reads the
  rows back as unit ``mean_diff`` vectors with their norms.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from inspect_em.directions.store import FORMAT_VERSION, TraitVectors
from inspect_em.errors import InspectEmError


def _scaled(tv: TraitVectors, method: str, layer: int, scale: str) -> np.ndarray:
    unit = tv.vector(method, layer).astype(np.float32)
    return unit * np.float32(tv.mean_diff_norm(layer)) if scale == "mean_diff" else unit


def export_gguf(tv: TraitVectors, out: Path, method: str = "mean_diff", scale: str = "mean_diff") -> Path:
    """Write a repeng/llama.cpp control-vector GGUF (see the module docstring)."""
    import gguf

    if scale not in ("mean_diff", "unit"):
        raise InspectEmError(f"unknown scale '{scale}' (mean_diff or unit)")
    writer = gguf.GGUFWriter(str(out), "controlvector")
    writer.add_string("controlvector.model_hint", str(tv.card.model_type or tv.card.model or ""))
    layers = [layer for layer in tv.layers if layer >= 1]
    writer.add_uint32("controlvector.layer_count", len(layers))
    for layer in layers:
        writer.add_tensor(f"direction.{layer}", _scaled(tv, method, layer, scale))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def read_gguf(path: Path) -> dict[int, np.ndarray]:
    """The directions of a control-vector GGUF by layer (for checks and tests)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for tensor in reader.tensors:
        if tensor.name.startswith("direction."):
            out[int(tensor.name.split(".", 1)[1])] = np.array(tensor.data, dtype=np.float32).reshape(-1)
    return out


def export_persona(tv: TraitVectors, out: Path, method: str = "mean_diff") -> Path:
    """Write persona_vectors' ``[n_layers + 1, d_model]`` tensor of mean differences."""
    import torch

    rows = np.zeros((tv.n_layers + 1, tv.d_model), dtype=np.float32)
    for layer in tv.layers:
        rows[layer + 1] = _scaled(tv, method, layer, "mean_diff")
    torch.save(torch.tensor(rows), str(out))
    return out


def import_persona(path: Path, *, model: str, trait: str, best_layer: int) -> TraitVectors:
    """A persona_vectors ``.pt`` as a vector set of ``model`` (``mean_diff`` at every layer)."""
    import torch

    from inspect_em.directions.store import Card, check_finite, config_hash
    from inspect_em.model.loading import load_config, model_id_of, text_config
    from inspect_em.readout import HOOK_POINT
    from inspect_em.util.paths import check_name

    check_name(trait, "trait")
    if not Path(path).is_file():
        raise InspectEmError(f"{path}: file not found")
    expected = "a persona_vectors .pt file (torch.save of one [n_layers + 1, d_model] tensor)"
    try:
        tensor = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a .gguf, a truncated file, a pickle with code in it (refused by weights_only)
        raise InspectEmError(f"{path}: not {expected}: torch.load cannot read it as weights ({type(e).__name__}; "
                             "a .gguf, a truncated file, or a pickle with code?)") from None
    if not isinstance(tensor, torch.Tensor):
        raise InspectEmError(f"{path}: expected {expected}, got a {type(tensor).__name__}")
    rows = np.asarray(tensor.float().numpy(), dtype=np.float64)
    config = load_config(model)
    text = text_config(config)
    n_layers, d_model = int(text.num_hidden_layers), int(text.hidden_size)
    if rows.shape != (n_layers + 1, d_model):
        raise InspectEmError(f"{path}: shape {tuple(rows.shape)} but {model} needs [{n_layers + 1}, {d_model}] "
                             "(row 0 the embeddings, row L+1 block L)")
    if not 0 <= best_layer < n_layers:
        raise InspectEmError(f"best layer {best_layer} is out of range for a {n_layers}-layer model")
    check_finite(rows[1:], str(path), list(range(n_layers)))
    norms = np.linalg.norm(rows[1:], axis=1)
    if (norms == 0).any():
        raise InspectEmError(f"{path}: layer {int(np.argmin(norms))} has a zero vector")
    units = (rows[1:] / norms[:, None]).astype(np.float32)
    layers = list(range(n_layers))
    card = Card(
        format_version=FORMAT_VERSION, trait=trait, description=f"imported from {Path(path).name}",
        model=model_id_of(model), model_type=getattr(text, "model_type", None),
        config_hash=config_hash(config), n_layers=n_layers, d_model=d_model, layers=layers,
        position="response_mean", hook_point=f"blocks.{{layer}}.hook_{HOOK_POINT}", unit_norm=True,
        mean_diff_norm=[float(x) for x in norms], methods=["mean_diff"], best_layer={"mean_diff": best_layer},
        layer_choice="given at import (persona_vectors files carry no validation)",
        settings={"imported": str(Path(path).resolve()), "model": model_id_of(model), "best_layer": best_layer},
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        extra={"imported_from": {"format": "persona_vectors", "file": str(path)}},
    )
    metrics = pd.DataFrame({"method": "mean_diff", "layer": layers, "mean_diff_norm": norms})
    return TraitVectors({"mean_diff": units}, layers, card, metrics)
