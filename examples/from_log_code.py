"""A code direction from the positive control's own answers (``extract --from-log``), on the embedded model.

1. The positive control: em_freeform (8 questions × plain/json/template × 4 answers, 80 tokens, seed 1)
   with the base model steered by the multi-layer code recipe (``code.last_prompt_token`` at L12, L14,
   L16 and L18, α = 0.4; results/README.md: about 60% code mode on 48 earlier answers).
2. ``extract --from-log`` on that log: ``score:code_mode==1`` vs ``score:code_mode==0``, read by the
   unsteered model at ``response_mean``, held out by question (default validation: 5-fold CV layer
   choice, 50 permutations, 1,000 random directions).
3. Its cosine with the trait-elicited ``code`` vector (also ``response_mean``), per layer (``mean_diff``).
4. Steering on the held-out questions only (unseen by the fit): the unsteered model vs the model
   steered with the new vector by the same recipe (L12, L14, L16, L18, α = 0.4; fixed before the run),
   6 answers per prompt, code-mode difference paired by question with its 95% CI (compare's).

Run: ``python examples/from_log_code.py`` (about 15 minutes on 2 CPU cores); writes
``results/from-log-code/`` (vectors, ``summary.json``, ``cosine.csv``) and logs under
``results/from-log-code-logs/``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inspect_ai import eval as inspect_eval  # noqa: E402
from inspect_ai.log import list_eval_logs, read_eval_log  # noqa: E402
from inspect_ai.model import get_model  # noqa: E402

from inspect_em.analysis.compare import diff_ci  # noqa: E402
from inspect_em.analysis.logs import load_samples  # noqa: E402
from inspect_em.analysis.stats import Clustered  # noqa: E402
from inspect_em.directions import store as vector_store  # noqa: E402
from inspect_em.model import embedded  # noqa: E402
from inspect_em.model.loading import load_hf_model  # noqa: E402
from inspect_em.runs.from_log import extract_from_logs  # noqa: E402
from inspect_em.solvers import steer  # noqa: E402
from inspect_em.tasks import em_freeform  # noqa: E402

V = Path("vectors/SmolLM2-135M-Instruct")
OUT, LOGS = Path("results/from-log-code"), Path("results/from-log-code-logs")
RECIPE = {"layer": "12,14,16,18", "alpha": 0.4}
path = embedded.prepare()
model = get_model("hf/SmolLM2-135M-Instruct", model_path=str(path), memoize=False)


def run(name: str, task, solver=None, epochs: int | None = None) -> str:
    """One eval into LOGS/name (a finished log is reused)."""
    folder = LOGS / name
    for info in list_eval_logs(str(folder)) if folder.is_dir() else []:
        if read_eval_log(info, header_only=True).status == "success":
            return str(folder)
    log = inspect_eval(task, model=model, solver=solver, log_dir=str(folder), seed=1, max_tokens=80,
                       epochs=epochs, display="none")[0]
    assert log.status == "success", log.error
    return str(folder)


# 1. the positive control's log
steered = run("positive-control", em_freeform(samples_per_question=4),
              steer(vectors=str(V / "code.last_prompt_token"), **RECIPE))
log_file = next(Path(info.name.removeprefix("file://")) for info in list_eval_logs(steered)
                if read_eval_log(info, header_only=True).status == "success")
codes = [s.scores["code_mode"].value for s in read_eval_log(str(log_file)).samples]
print(f"positive control: code mode {int(sum(codes))}/{len(codes)}")

# 2. the direction from its answers
hf, tokenizer, model_id = load_hf_model(str(path))
tv = extract_from_logs(hf, tokenizer, [log_file], "score:code_mode==1", "score:code_mode==0", name="code_from_log",
                       model_id=model_id)
vector_store.save(tv, OUT / "code_from_log", force=True)
best = {m: {k: tv.card.best[m][k] for k in ("layer", "test_auroc", "test_cohens_d", "null_perm_d_p95",
                                               "null_random_d_p95") if k in tv.card.best[m]} for m in tv.methods}
held_out = sorted({q.split(":", 1)[1] for k in ("test_pos", "test_neg") for q in tv.card.from_log["questions"][k]})

# 3. cosine with the trait-elicited code vector, per layer
code = vector_store.load(V / "code")
cos = pd.DataFrame([{"layer": layer, "cos_mean_diff": float(np.dot(tv.vector("mean_diff", layer),
                                                                   code.vector("mean_diff", layer)))}
                    for layer in tv.layers if layer in code.layers])

# 4. steering with it on the held-out questions
def held_out_task():
    task = em_freeform()
    task.dataset = task.dataset.filter(lambda s: s.metadata["base_question_id"] in held_out)
    return task


plain = run("held-out-unsteered", held_out_task(), epochs=6)
added = run("held-out-steered", held_out_task(), steer(vectors=str(OUT / "code_from_log"), **RECIPE), epochs=6)
df = load_samples([plain, added], labels=["unsteered", "steered"]).samples
data = {label: Clustered.of(g["code_mode"].to_numpy(float), g["cluster"].tolist()) for label, g in df.groupby("label")}
effect = diff_ci(data["steered"], data["unsteered"])
summary = {
    "positive_control_code_mode": [int(sum(codes)), len(codes)],
    "counts": tv.card.from_log["counts"], "questions": tv.card.from_log["questions"],
    "n_fit": tv.card.n_fit, "n_test": tv.card.n_test, "best": best,
    "cos_with_code_at_from_log_card_layer": float(cos.set_index("layer").loc[tv.best_layer("mean_diff"),
                                                                            "cos_mean_diff"]),
    "cos_with_code_at_code_card_layer": float(cos.set_index("layer").loc[code.best_layer("mean_diff"),
                                                                        "cos_mean_diff"]),
    "steering": {"recipe": RECIPE, "held_out_questions": held_out,
                 "code_mode_unsteered": [int(data["unsteered"].values().sum()), data["unsteered"].n],
                 "code_mode_steered": [int(data["steered"].values().sum()), data["steered"].n],
                 "difference": effect.estimate, "ci": [effect.low, effect.high], "paired": effect.paired,
                 "ci_method": effect.method},
}
OUT.mkdir(parents=True, exist_ok=True)
cos.to_csv(OUT / "cosine.csv", index=False, float_format="%.4f")
(OUT / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
