"""Checkpoint series (``inspect-em finetune --save-every N``): the order of a series, and what its
LoRA adapters do to the weights.

For each checkpoint and each adapted module, ``ΔW = s · B A`` (``s = lora_alpha / √r`` with rsLoRA,
else ``lora_alpha / r``). The table holds ``‖ΔW‖_F`` per layer and module, and for the modules that
write into the residual stream (``o_proj``, ``down_proj``) the cosine of ΔW's top output direction
(its first left singular vector, sign-free) with each trait vector at that vector's card layer: the
"direction rotation" signal of the Model Organisms for EM work. All layers of a checkpoint are
decomposed at once (batched QR of ``B`` and SVD of ``R A``, never the d × d matrix).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from inspect_em.errors import InspectEmError

RESIDUAL_WRITERS = ("o_proj", "down_proj")  # modules whose output is added to the residual stream
CHECKPOINT_FILE = "checkpoint.json"


@dataclass(frozen=True)
class Checkpoint:
    """One saved adapter of a series and its optimizer step."""

    step: int
    path: Path


def read_series(folder: str | Path) -> list[Checkpoint]:
    """The checkpoints under ``folder`` (a finetune's output or its ``checkpoints/``), in step order
    as each ``checkpoint.json`` records it, whatever the folder names."""
    root = Path(folder)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    if not root.is_dir():
        raise InspectEmError(f"{folder}: no such folder")
    found: dict[int, Path] = {}
    for marker in sorted(root.glob(f"*/{CHECKPOINT_FILE}")):
        try:
            step = int(json.loads(marker.read_text())["step"])
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            raise InspectEmError(f"{marker}: expected {{\"step\": <int>}}") from None
        if step in found:
            raise InspectEmError(f"{folder}: step {step} saved twice ({found[step].name}, {marker.parent.name})")
        found[step] = marker.parent
    if not found:
        raise InspectEmError(f"{folder}: no checkpoints (finetune with --save-every N)")
    return [Checkpoint(step, found[step]) for step in sorted(found)]


def _module_key(name: str) -> tuple[int, str, str] | None:
    """(layer, module, A|B) of an adapter weight name such as
    ``base_model.model.model.layers.3.self_attn.o_proj.lora_A.weight``."""
    parts = name.split(".")
    if "layers" not in parts or parts[-1] != "weight" or parts[-2] not in ("lora_A", "lora_B"):
        return None
    layer = int(parts[parts.index("layers") + 1])
    return layer, parts[-3], parts[-2][-1]


def lora_deltas(adapter: str | Path, vectors: Sequence[tuple[str, int, object]] = ()) -> pd.DataFrame:
    """One row per layer × adapted module of the adapter at ``adapter``: ``delta_norm`` (``‖ΔW‖_F``)
    and, for residual writers, ``cos:<trait>`` = ``|u₁ · v̂|`` for each ``(trait, card layer, v̂)`` in
    ``vectors`` whose card layer is this row's layer (``v̂`` a ``[d_model]`` array)."""
    import torch
    from safetensors.torch import load_file

    folder = Path(adapter)
    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_dora"):
        raise InspectEmError(f"{adapter}: per-module ranks or alphas, or DoRA: not read here (one r and alpha)")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    weights = load_file(str(folder / "adapter_model.safetensors"))
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for name, tensor in weights.items():
        key = _module_key(name)
        if key is not None:
            pairs.setdefault(key[:2], {})[key[2]] = tensor.float()
    rows: list[dict[str, object]] = []
    for module in sorted({m for _, m in pairs}):
        layers = sorted(layer for layer, m in pairs if m == module)
        a = torch.stack([pairs[(layer, module)]["A"] for layer in layers])  # [L, r, in]
        b = torch.stack([pairs[(layer, module)]["B"] for layer in layers]) * scale  # [L, out, r]
        q, rr = torch.linalg.qr(b)  # ΔW = Q (R A): its singular values are R A's
        u_small, sigma, _ = torch.linalg.svd(rr @ a, full_matrices=False)  # [L, r, r], [L, r]
        norms = sigma.pow(2).sum(-1).sqrt()
        top = (q @ u_small[..., :1])[..., 0]  # [L, out]: the first left singular vector
        for i, layer in enumerate(layers):
            row: dict[str, object] = {"layer": layer, "module": module, "delta_norm": float(norms[i])}
            if module in RESIDUAL_WRITERS:
                for trait, card_layer, v in vectors:
                    if card_layer == layer:  # no direction while ΔW = 0 (step 0: B starts at zero)
                        vt = torch.as_tensor(v, dtype=torch.float32)
                        row[f"cos:{trait}"] = float((top[i] @ vt).abs() / (top[i].norm() * vt.norm())) \
                            if norms[i] > 0 else float("nan")
            rows.append(row)
    if not rows:
        raise InspectEmError(f"{adapter}: no LoRA weights in adapter_model.safetensors")
    return pd.DataFrame(rows)


def series_deltas(folder: str | Path, vectors: Sequence[tuple[str, int, object]] = ()) -> pd.DataFrame:
    """:func:`lora_deltas` of every checkpoint of a series, with a ``step`` column, in step order."""
    frames = [lora_deltas(c.path, vectors).assign(step=c.step) for c in read_series(folder)]
    return pd.concat(frames, ignore_index=True)
