"""How separable are the from-log direction's own answers by the trait-elicited ``code`` vector?

Reads ``results/from-log-code/code_from_log`` (made by ``from_log_code.py``): its card keeps every
answer and prompt of each split. The shipped ``code`` vector (``mean_diff``, its card layer, response
mean) scores the fit and the held-out answers; scikit-learn's AUROC of code (positive) vs prose answers.
Writes ``results/from-log-code/code_vector_auroc.json``. Run: ``python examples/from_log_code_check.py``
(under a minute on 2 CPU cores).
"""

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from inspect_em.directions import store as vector_store
from inspect_em.model import embedded
from inspect_em.model.activations import collect_activations
from inspect_em.model.loading import load_hf_model

FOLDER = Path("results/from-log-code")
card = json.loads((FOLDER / "code_from_log" / "card.json").read_text())
model, tokenizer, _ = load_hf_model(str(embedded.prepare()))
code = vector_store.load("vectors/SmolLM2-135M-Instruct/code")
layer = code.best_layer("mean_diff")
prompts, answers = card["responses"]["prompts"], card["responses"]["by_split"]
result = {"vector": "code", "method": "mean_diff", "layer": layer}
for split in ("fit", "test"):
    scores = {side: collect_activations(model, tokenizer, prompts[f"{split}_{side}"], layers=[layer],
                                        position="response_mean", responses=answers[f"{split}_{side}"],
                                        progress=False)[:, 0].double().numpy() @ code.vector("mean_diff", layer)
              for side in ("pos", "neg")}
    labels = np.r_[np.ones(len(scores["pos"])), np.zeros(len(scores["neg"]))]
    result[f"{split}_auroc"] = round(float(roc_auc_score(labels, np.r_[scores["pos"], scores["neg"]])), 4)
(FOLDER / "code_vector_auroc.json").write_text(json.dumps(result, indent=2))
print(result)
