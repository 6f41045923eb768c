"""Which out-of-distribution refusal prompts the shipped refusal vector ranks wrongly.

Projects the refusal trait's OOD prompts (other writer, other styles) on the shipped ``mean_diff``
vector at its card's layer (last prompt token) and prints the AUROC, the lowest-reading harmful
prompts and the highest-reading benign ones. Run: ``python examples/refusal_ood_errors.py``.
"""

import numpy as np
from sklearn.metrics import roc_auc_score

from inspect_em.directions import store as vector_store
from inspect_em.directions.traits import load_prompts, load_trait
from inspect_em.model import embedded
from inspect_em.model.activations import collect_activations
from inspect_em.model.loading import load_hf_model

trait = load_trait("refusal")
tv = vector_store.load("vectors/SmolLM2-135M-Instruct/refusal")
layer = tv.best_layer("mean_diff")
v = tv.vector("mean_diff", layer)
model, tokenizer, _ = load_hf_model(str(embedded.prepare()))
pos, neg = load_prompts(trait.ood_positive), load_prompts(trait.ood_negative)


def project(prompts: list[str]) -> np.ndarray:
    """``[n]`` projections at the last prompt token of ``layer``."""
    acts = collect_activations(model, tokenizer, prompts, layers=[layer], position="last_prompt_token",
                               progress=False)
    return np.asarray(acts)[:, 0] @ v


pp, pn = project(pos), project(neg)
print(f"layer {layer}: OOD AUROC {roc_auc_score([1] * len(pp) + [0] * len(pn), np.r_[pp, pn]):.3f}; "
      f"harmful {pp.mean():.1f} ± {pp.std():.1f}, benign {pn.mean():.1f} ± {pn.std():.1f}")
print("lowest-reading harmful prompts:")
for i in np.argsort(pp)[:8]:
    print(f"  {pp[i]:6.1f}  {pos[i][:110]}")
print("highest-reading benign prompts:")
for i in np.argsort(-pn)[:8]:
    print(f"  {pn[i]:6.1f}  {neg[i][:110]}")
