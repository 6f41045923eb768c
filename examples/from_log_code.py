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

Within that one log the answers ``code_mode`` calls prose are mostly broken code (results/README.md),
so steps 5–7 repeat 2–4 with labels that are real: the steered log's code answers (``--positive-log``)
against the **unsteered base model's** answers to the same questions (``--negative-log``: em_freeform,
same settings and seed, ``score:code_mode==0``), both read by the unsteered model. The steering recipe
was fixed before that run too: the same layers, with α set so that the norm added over L12–L18 equals
the positive control's (α × the new vector's fit norms summed = 0.4 × ``code.last_prompt_token``'s).
For both directions the shipped ``code`` vector's AUROC on the same held-out answers is the reference.

8. Two held-out questions are two clusters, too few for a useful CI, so the steering is also read on
   24 plain requests no fit has seen (the first 24 of ``refusal_benign_heldout.jsonl``, asked as
   em_freeform questions, plain variant, 3 answers each): unsteered, steered with ``code_vs_base``
   by the recipe of step 7, and, for reference, the positive control's recipe with the shipped vector.
   Added after step 7's CI was seen; the recipes are unchanged.

Run: ``python examples/from_log_code.py`` (about 25 minutes on 2 CPU cores); writes
``results/from-log-code/`` (vectors, ``summary.json``, ``cosine.csv``) and logs under
``results/from-log-code-logs/``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from inspect_ai import eval as inspect_eval  # noqa: E402
from inspect_ai.log import list_eval_logs, read_eval_log  # noqa: E402
from inspect_ai.model import get_model  # noqa: E402

from inspect_em.analysis.compare import diff_ci  # noqa: E402
from inspect_em.analysis.logs import load_samples  # noqa: E402
from inspect_em.analysis.stats import Clustered  # noqa: E402
from inspect_em.directions import store as vector_store  # noqa: E402
from inspect_em.model import embedded  # noqa: E402
from inspect_em.model.activations import collect_activations  # noqa: E402
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

hf, tokenizer, model_id = load_hf_model(str(path))
code = vector_store.load(V / "code")
code_lpt = vector_store.load(V / "code.last_prompt_token")
recipe_layers = [int(x) for x in RECIPE["layer"].split(",")]


def code_vector_auroc(tv) -> dict[str, float]:
    """The shipped ``code`` vector's AUROC (mean_diff, its card layer, response mean) on tv's fit and
    held-out answers (the card keeps each split's prompts and answers), by scikit-learn."""
    layer = code.best_layer("mean_diff")
    prompts, answers, systems = (tv.card.responses[k] for k in ("prompts", "by_split", "systems"))
    out = {}
    for split in ("fit", "test"):
        scores = {side: collect_activations(hf, tokenizer, prompts[f"{split}_{side}"], layers=[layer],
                                            position="response_mean", responses=answers[f"{split}_{side}"],
                                            system=systems[f"{split}_{side}"], progress=False)[:, 0]
                  .double().numpy() @ code.vector("mean_diff", layer) for side in ("pos", "neg")}
        labels = np.r_[np.ones(len(scores["pos"])), np.zeros(len(scores["neg"]))]
        out[f"{split}_auroc"] = round(float(roc_auc_score(labels, np.r_[scores["pos"], scores["neg"]])), 4)
    return {"vector": "code", "method": "mean_diff", "layer": layer, **out}


def direction(folder: str, logs: list[Path], positive_logs=(), negative_logs=()):
    """The from-log vectors in OUT/folder (made once; a finished folder is read back)."""
    if (OUT / folder / "card.json").is_file():
        return vector_store.load(OUT / folder)
    tv = extract_from_logs(hf, tokenizer, logs, "score:code_mode==1", "score:code_mode==0", name=folder,
                           model_id=model_id, positive_logs=positive_logs, negative_logs=negative_logs)
    vector_store.save(tv, OUT / folder, force=True)
    return tv


def held_out_task(held_out: list[str]):
    task = em_freeform()
    task.dataset = task.dataset.filter(lambda s: s.metadata["base_question_id"] in held_out)
    return task


def evaluate(tv, steer_name: str, recipe: dict) -> dict:
    """Held-out AUROC per method, cosine with ``code`` per layer, and steering on the held-out questions."""
    best = {m: {k: tv.card.best[m][k] for k in ("layer", "test_auroc", "test_cohens_d", "null_perm_d_p95",
                                                   "null_random_d_p95") if k in tv.card.best[m]} for m in tv.methods}
    held_out = sorted({q.split(":", 1)[1] for k in ("test_pos", "test_neg") for q in tv.card.from_log["questions"][k]})
    cos = pd.DataFrame([{"layer": layer, "cos_mean_diff": float(np.dot(tv.vector("mean_diff", layer),
                                                                       code.vector("mean_diff", layer)))}
                        for layer in tv.layers if layer in code.layers])
    plain = run(f"held-out-unsteered{'' if held_out == ['gender_roles', 'quick_buck'] else '-' + '-'.join(held_out)}",
                held_out_task(held_out), epochs=6)
    added = run(steer_name, held_out_task(held_out), steer(vectors=str(OUT / tv.trait), **recipe), epochs=6)
    df = load_samples([plain, added], labels=["unsteered", "steered"]).samples
    data = {label: Clustered.of(g["code_mode"].to_numpy(float), g["cluster"].tolist())
            for label, g in df.groupby("label")}
    effect = diff_ci(data["steered"], data["unsteered"], "code_mode")
    by_layer = cos.set_index("layer")["cos_mean_diff"]
    return {
        "counts": tv.card.from_log["counts"], "sides": tv.card.from_log.get("sides"),
        "questions": tv.card.from_log["questions"], "n_fit": tv.card.n_fit, "n_test": tv.card.n_test, "best": best,
        "code_vector_auroc": code_vector_auroc(tv),
        "cos_with_code_at_from_log_card_layer": float(by_layer.loc[tv.best_layer("mean_diff")]),
        "cos_with_code_at_code_card_layer": float(by_layer.loc[code.best_layer("mean_diff")]),
        "cos_with_code_by_layer": {int(k): round(float(v), 4) for k, v in by_layer.items()},
        "steering": {"recipe": recipe, "held_out_questions": held_out,
                     "added_norm_per_layer": {layer: recipe["alpha"] * tv.mean_diff_norm(layer)
                                              for layer in recipe_layers},
                     "code_mode_unsteered": [int(data["unsteered"].values().sum()), data["unsteered"].n],
                     "code_mode_steered": [int(data["steered"].values().sum()), data["steered"].n],
                     "difference": effect.estimate, "ci": [effect.low, effect.high], "paired": effect.paired,
                     "ci_method": effect.method},
    }, cos


# 2–4. the direction from the steered log's own answers (code vs "prose", which is mostly broken code)
within = direction("code_from_log", [log_file])
summary = {"positive_control_code_mode": [int(sum(codes)), len(codes)],
           "code_recipe_added_norm_per_layer": {layer: RECIPE["alpha"] * code_lpt.mean_diff_norm(layer)
                                                for layer in recipe_layers}}
summary["within_log"], cos = evaluate(within, "held-out-steered", RECIPE)

# 5–7. the steered log's code answers vs the unsteered base model's answers to the same questions
base = run("base-model", em_freeform(samples_per_question=4))
base_file = next(Path(info.name.removeprefix("file://")) for info in list_eval_logs(base)
                 if read_eval_log(info, header_only=True).status == "success")
base_codes = [s.scores["code_mode"].value for s in read_eval_log(str(base_file)).samples]
summary["base_model_code_mode"] = [int(sum(base_codes)), len(base_codes)]
# what the answers code_mode calls prose hold: code markers (fences, def, function, return, import, class,
# a call), counted in the steered log and in the base model's log
MARKERS = re.compile(r"```|\bdef\b|\bfunction\b|\breturn\b|\bimport\b|\bclass\b|[A-Za-z_]\w*\([^)]*\)")
summary["prose_answers_with_code_markers"] = {"pattern": MARKERS.pattern}
for name, file in (("steered", log_file), ("base_model", base_file)):
    prose = [s.output.completion for s in read_eval_log(str(file)).samples if s.scores["code_mode"].value == 0]
    summary["prose_answers_with_code_markers"][name] = [sum(bool(MARKERS.search(a)) for a in prose), len(prose)]
vs_base = direction("code_vs_base", [], positive_logs=[log_file], negative_logs=[base_file])
# fixed before the steering run: the positive control's added norm, summed over its layers
alpha = RECIPE["alpha"] * sum(code_lpt.mean_diff_norm(x) for x in recipe_layers) / \
    sum(vs_base.mean_diff_norm(x) for x in recipe_layers)
summary["vs_base"], cos_vs_base = evaluate(vs_base, "held-out-steered-vs-base",
                                           {"layer": RECIPE["layer"], "alpha": round(alpha, 4)})

# 8. unseen plain requests: more questions, so the steering effect has a CI
BENIGN = Path("src/inspect_em/resources/prompts/refusal_benign_heldout.jsonl")
requests = [json.loads(line)["prompt"] for line in BENIGN.read_text(encoding="utf-8").splitlines()[:24]]
question_file = LOGS / "unseen_requests.yaml"
question_file.parent.mkdir(parents=True, exist_ok=True)
question_file.write_text(json.dumps([{"id": f"request_{i:02d}", "type": "free_form", "paraphrases": [text]}
                                     for i, text in enumerate(requests)], indent=1))  # JSON is YAML


def unseen_task():
    return em_freeform(questions=str(question_file), variants="plain")


arms = {"unsteered": run("unseen-unsteered", unseen_task(), epochs=3),
        "code_vs_base": run("unseen-steered-vs-base", unseen_task(),
                            steer(vectors=str(OUT / "code_vs_base"), **summary["vs_base"]["steering"]["recipe"]),
                            epochs=3),
        "code.last_prompt_token (positive control)": run("unseen-steered-code", unseen_task(),
                                                         steer(vectors=str(V / "code.last_prompt_token"), **RECIPE),
                                                         epochs=3)}
df = load_samples(list(arms.values()), labels=["unsteered", "vs_base", "code"]).samples
data = {label: Clustered.of(g["code_mode"].to_numpy(float), g["cluster"].tolist()) for label, g in df.groupby("label")}
summary["unseen_requests"] = {"source": "refusal_benign_heldout.jsonl[:24], plain variant, 3 answers each"}
for name, label in (("unsteered", "unsteered"), ("code_vs_base", "vs_base"),
                    ("code.last_prompt_token (positive control)", "code")):
    entry = {"code_mode": [int(data[label].values().sum()), data[label].n]}
    if label != "unsteered":
        effect = diff_ci(data[label], data["unsteered"], "code_mode")
        entry.update(difference=effect.estimate, ci=[effect.low, effect.high], paired=effect.paired,
                     n_clusters_paired=effect.n_paired, ci_method=effect.method)
    summary["unseen_requests"][name] = entry

OUT.mkdir(parents=True, exist_ok=True)
cos.merge(cos_vs_base, on="layer", suffixes=("", "_vs_base")).to_csv(OUT / "cosine.csv", index=False,
                                                                     float_format="%.4f")
(OUT / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
