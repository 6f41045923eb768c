"""How far any linear readout of the embedded model can separate the refusal trait's OOD prompts.

The shipped ``mean_diff`` refusal vector reaches OOD AUROC 0.85 (``refusal_ood_errors.py``). This
asks whether that is the fit set's fault (one style) or the model's: it gives linear readouts
*in-style* training data, i.e. half of the OOD pairs, and tests them on the other half (20 random
splits by pair, at every layer, last prompt token):

- ``mean_diff, fit``: the shipped recipe (fit split only), on the same test halves;
- ``mean_diff, fit + OOD half``: the fit split plus the other half of the OOD pairs;
- ``probe, OOD half``: a logistic-regression probe (standardised, C = 0.01) on the OOD half alone;
- ``probe, fit + OOD half``: the same probe on the fit split plus the OOD half.

The per-layer maximum is chosen on the test halves themselves, so it is an optimistic ceiling, not
a measurement. Run: ``python examples/refusal_ood_ceiling.py`` (about 2 minutes on 2 CPU cores).
"""

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from inspect_em.directions import store as vector_store
from inspect_em.directions.traits import load_prompts, load_trait
from inspect_em.model import embedded
from inspect_em.model.activations import collect_activations
from inspect_em.model.loading import load_hf_model

SPLITS = 20
CARD_LAYER = vector_store.load("vectors/SmolLM2-135M-Instruct/refusal").best_layer("mean_diff")  # 27
trait = load_trait("refusal")
model, tokenizer, _ = load_hf_model(str(embedded.prepare()))


def acts(path) -> np.ndarray:
    """``[n, layers, d_model]`` at the last prompt token."""
    return collect_activations(model, tokenizer, load_prompts(path), layers="all", position="last_prompt_token",
                               progress=False).numpy()


fit_pos, fit_neg = acts(trait.positive), acts(trait.negative)
ood_pos, ood_neg = acts(trait.ood_positive), acts(trait.ood_negative)
assert len(ood_pos) == len(ood_neg), "OOD prompts come in pairs"


def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float(roc_auc_score([1] * len(pos) + [0] * len(neg), np.r_[pos, neg]))


def probe(pos: np.ndarray, neg: np.ndarray):
    x, y = np.r_[pos, neg], np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=5000)).fit(x, y).decision_function


readouts = ["mean_diff, fit", "mean_diff, fit + OOD half", "probe, OOD half", "probe, fit + OOD half"]
rng = np.random.default_rng(0)
splits = [rng.permutation(len(ood_pos)) for _ in range(SPLITS)]
table = np.zeros((len(readouts), fit_pos.shape[1], SPLITS))
for layer in range(fit_pos.shape[1]):
    fp, fn, op, on = fit_pos[:, layer], fit_neg[:, layer], ood_pos[:, layer], ood_neg[:, layer]
    shipped = fp.mean(0) - fn.mean(0)
    for k, order in enumerate(splits):
        train, test = order[: len(order) // 2], order[len(order) // 2:]
        tp, tn = op[test], on[test]
        v = np.r_[fp, op[train]].mean(0) - np.r_[fn, on[train]].mean(0)
        p1, p2 = probe(op[train], on[train]), probe(np.r_[fp, op[train]], np.r_[fn, on[train]])
        table[:, layer, k] = [auroc(tp @ shipped, tn @ shipped), auroc(tp @ v, tn @ v),
                              auroc(p1(tp), p1(tn)), auroc(p2(tp), p2(tn))]

mean = table.mean(-1)
print(f"OOD test-half AUROC, mean of {SPLITS} splits by pair (last prompt token)")
print(f"{'readout':28s} {'L' + str(CARD_LAYER):>7s} {'max over layers':>17s}")
for i, name in enumerate(readouts):
    best = int(mean[i].argmax())
    print(f"{name:28s} {mean[i, CARD_LAYER]:7.3f} {mean[i, best]:11.3f} (L{best})")
