"""The custom metrics through Inspect's real epoch reducer (pytest_inspect_evals' helpers)."""

from __future__ import annotations

import numpy as np
import pytest
from pytest_inspect_evals.metrics import assert_agreeing_epochs_change_nothing, run_metrics

from inspect_em.scorers.metrics import contrast, mean_by_question

QUESTIONS = [{"question_id": "wish"}, {"question_id": "wish"}, {"question_id": "bored"}]
PROMPTS = [{"prompt_type": "harmful"}, {"prompt_type": "harmful"}, {"prompt_type": "benign"},
           {"prompt_type": "benign"}]


def test_mean_by_question_reads_reduced_scores():
    # per sample, three epochs: the mean reducer leaves 2/3, 0 and 1
    values = run_metrics([mean_by_question()], [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
                         metadata=QUESTIONS)
    assert values["wish"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert values["bored"] == pytest.approx(1.0)
    assert_agreeing_epochs_change_nothing([mean_by_question()], [1.0, 0.0, 1.0], metadata=QUESTIONS)


def test_mean_by_question_groups_samples_without_a_question():
    values = run_metrics([mean_by_question()], [[1.0], [0.0]], metadata=[{}, {"question_id": "q"}])
    assert values["(none)"] == 1.0 and values["q"] == 0.0


def test_contrast_gives_group_means_stderrs_and_the_gap():
    epochs = [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 1.0]]
    values = run_metrics([contrast()], epochs, metadata=PROMPTS)
    harmful, benign = [0.5, 1.0], [0.0, 0.5]  # the mean reducer's values, by hand
    assert values["harmful"] == pytest.approx(0.75) and values["benign"] == pytest.approx(0.25)
    assert values["gap"] == pytest.approx(0.5)
    se = lambda xs: (sum((x - sum(xs) / 2) ** 2 for x in xs) / 1) ** 0.5 / 2 ** 0.5  # noqa: E731
    assert values["harmful_stderr"] == pytest.approx(se(harmful))
    assert values["gap_stderr"] == pytest.approx((se(harmful) ** 2 + se(benign) ** 2) ** 0.5)
    assert_agreeing_epochs_change_nothing([contrast()], [1.0, 0.0, 0.0, 1.0], metadata=PROMPTS)


def test_contrast_is_silent_without_prompt_types():
    values = run_metrics([contrast()], [[1.0], [0.0]], metadata=[{}, {}])
    assert not {"harmful", "benign", "gap"} & set(values)


def test_judge_agreement_counts_and_kappa_over_every_epoch():
    """Two graders' per-answer labels (not epoch means): kappa and Spearman against sklearn/scipy."""
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    from inspect_em.scorers.judge import judge_agreement

    a = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    b = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    aligned_a, aligned_b = [10.0, 80.0, 20.0, 90.0, 70.0, 15.0], [12.0, 85.0, 60.0, 88.0, 20.0, 30.0]

    def value(i: int) -> dict[str, float]:
        return {"misaligned/g1": a[i], "misaligned/g2": b[i], "aligned/g1": aligned_a[i], "aligned/g2": aligned_b[i],
                "judge_code/g1": 0.0, "judge_code/g2": float(i == 0), "judge_refusal/g1": 0.0,
                "judge_refusal/g2": 0.0}

    epochs = [[value(0), value(1)], [value(2), value(3)], [value(4), value(5)]]  # three samples x two epochs
    values = run_metrics([judge_agreement()], epochs, reducer=None)
    pick = {k.split("/", 1)[-1] if k.startswith("inspect_em/") else k: v for k, v in values.items()}
    kappa = next(v for k, v in pick.items() if k.startswith("kappa_misaligned"))
    rho = next(v for k, v in pick.items() if k.startswith("spearman_aligned"))
    assert kappa == pytest.approx(cohen_kappa_score(a, b))
    assert rho == pytest.approx(spearmanr(aligned_a, aligned_b)[0])
    assert next(v for k, v in pick.items() if k.startswith("n_misaligned/g1")) == 3.0
    assert next(v for k, v in pick.items() if k.startswith("n_judge_code/g2")) == 1.0  # only answer 0


def test_question_stderr_clusters_by_question_and_falls_back_without_it():
    from inspect_em.scorers.metrics import question_stderr

    scores = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    questions = ["a", "a", "b", "b", "c", "c"]
    values = run_metrics([question_stderr()], [[x] for x in scores],
                         metadata=[{"base_question_id": q} for q in questions])
    # Liang-Zeger cluster-robust SE of a mean (written out), with the small-sample factor G/(G-1)
    x = np.array(scores)
    resid = {q: float(sum(x[i] - x.mean() for i in range(len(x)) if questions[i] == q)) for q in set(questions)}
    g = len(resid)
    expected = np.sqrt(g / (g - 1) * sum(r**2 for r in resid.values())) / len(x)
    (name, value), = values.items()
    assert name.endswith("question_stderr") and value == pytest.approx(expected)
    plain = run_metrics([question_stderr()], [[x] for x in scores])
    assert next(iter(plain.values())) == pytest.approx(np.std(scores, ddof=1) / np.sqrt(len(scores)))
