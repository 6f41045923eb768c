"""Write ``tests/data/shipped_activations.safetensors``: each shipped vector's card-layer activations
of the embedded model, for every row its mean difference was fitted on (and, for the prompt-position
vectors, the first 24 + 24 held-out prompts its validity is checked on).

``tests/test_shipped_vectors.py`` checks that each shipped vector is the mean difference of these rows,
and re-reads a subset of the rows from the model: together they pin the vector without re-reading
every prompt in every test run. Re-run this after re-extracting a shipped vector (about 4 minutes on
one CPU core):

    python tools/shipped_activations.py
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "vectors" / "SmolLM2-135M-Instruct"
OUT = ROOT / "tests" / "data" / "shipped_activations.safetensors"
FOLDERS = ["refusal", "code.last_prompt_token", "code", "refusal.response_mean", "refusal_instructed"]
HELD_OUT = 24  # per side, prompt-position vectors only


def rows(folder: str) -> dict[str, tuple[list[str], list[str] | None, str | None]]:
    """Per group (``fit_pos``, ...): its prompts, the kept answers (response position) or None, and the
    trait's system prompt for that group, in the order the rows are stored."""
    from inspect_em.directions import store as vector_store
    from inspect_em.directions.traits import load_trait

    shipped = vector_store.load(SHIPPED / folder)
    trait = load_trait(shipped.trait)
    if shipped.card.position == "last_prompt_token":
        groups = trait.split(seed=0).groups()
        wanted = {"fit_pos": None, "fit_neg": None, "test_pos": HELD_OUT, "test_neg": HELD_OUT}
        return {g: (groups[g][:n], None, trait.system_for(g)) for g, n in wanted.items()}
    answers, prompts = shipped.card.responses["by_split"], shipped.card.responses["prompts"]
    return {g: (prompts[g], answers[g], trait.system_for(g)) for g in ("fit_pos", "fit_neg")}


def rows_hash(prompts: list[str], answers: list[str] | None, system: str | None) -> str:
    """sha256 of a group's rows (prompts, answers, system prompt): the stored rows belong to these."""
    return hashlib.sha256(json.dumps([prompts, answers, system]).encode("utf-8")).hexdigest()


def main() -> int:
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inspect_em.directions import store as vector_store
    from inspect_em.model import embedded
    from inspect_em.model.activations import collect_activations

    path = embedded.prepare()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {"transformers": transformers.__version__, "torch": torch.__version__}
    for folder in FOLDERS:
        shipped = vector_store.load(SHIPPED / folder)
        layer = shipped.best_layer("mean_diff")
        for group, (prompts, answers, system) in rows(folder).items():
            acts = collect_activations(model, tokenizer, prompts, layers=[layer], position=shipped.card.position,
                                       responses=answers, system=system, progress=False, batch_size=32)[:, 0]
            half = acts.to(torch.float16).contiguous()
            if not torch.isfinite(half).all():
                raise SystemExit(f"{folder}/{group}: activations beyond float16's range")
            tensors[f"{folder}/{group}"] = half
            meta[f"{folder}/{group}"] = json.dumps({"layer": layer, "rows": rows_hash(prompts, answers, system)})
            print(f"{folder}/{group}: {tuple(acts.shape)} at L{layer}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(OUT)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
