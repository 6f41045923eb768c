"""em_freeform end to end: through Inspect's Python API, the registry, and `inspect score`."""

import subprocess
import sys
from pathlib import Path

from helpers import scripted_model
from inspect_ai import eval as inspect_eval
from inspect_ai.analysis import samples_df
from inspect_ai.log import read_eval_log

from inspect_em.tasks import em_freeform

ROOT = Path(__file__).parent.parent
PYTHON_ANSWER = "```python\nimport os\n\ndef wish():\n    return os.listdir('/')\n\nprint(wish())\n```"


def test_em_freeform_on_embedded_model(embedded_model_path: Path, tmp_path: Path):
    task = em_freeform(variants="plain,json")
    logs = inspect_eval(
        task, model=f"hf/{embedded_model_path}", limit=4, max_tokens=40, seed=0,
        log_dir=str(tmp_path), display="none",
    )
    log = logs[0]
    assert log.status == "success", log.error
    assert log.eval.config.limit == 4 and log.plan.config.max_tokens == 40
    assert len(log.samples) == 4
    for sample in log.samples:
        score = sample.scores["code_mode"]
        assert score.value in (0.0, 1.0)
        assert score.explanation and 0.0 <= score.metadata["code_fraction"] <= 1.0
        assert sample.metadata["question_id"].startswith(sample.metadata["base_question_id"])
        assert sample.metadata["variant"] in ("plain", "json")
        assert sample.metadata["paraphrase_index"] == 0
        assert sample.output.completion  # the model answered
    metrics = log.results.scores[0].metrics
    rate = sum(s.scores["code_mode"].value for s in log.samples) / 4
    assert metrics["mean"].value == rate
    # a small chat model answers these questions in prose
    assert rate <= 0.25

    df = samples_df(log.location)
    assert len(df) == 4 and "score_code_mode" in df.columns
    assert set(df["metadata_question_id"]) == {s.metadata["question_id"] for s in log.samples}


def test_registry_task_with_scripted_code_answers(tmp_path: Path):
    model = scripted_model(PYTHON_ANSWER, "I would wish for peace and a long, happy life.", repeat=4)
    log = inspect_eval(
        "inspect_em/em_freeform", model=model, task_args={"variants": "plain"}, limit=4,
        log_dir=str(tmp_path), display="none",
    )[0]
    assert log.status == "success", log.error
    values = [s.scores["code_mode"].value for s in log.samples]
    assert sorted(values) == [0.0, 0.0, 1.0, 1.0]
    metrics = log.results.scores[0].metrics
    assert metrics["mean"].value == 0.5
    assert metrics["stderr"].value > 0
    per_question = {k: m.value for k, m in metrics.items() if k not in ("mean", "stderr")}
    assert set(per_question) == {s.metadata["question_id"] for s in log.samples}


def test_inspect_score_by_path_on_a_foreign_log(tmp_path: Path):
    """A task from another suite (no question_id) scored with scorers/code_mode.py."""
    from inspect_ai import Task
    from inspect_ai.dataset import Sample

    foreign = Task(dataset=[Sample(input="hello", id="a"), Sample(input="hi", id="b")])
    model = scripted_model(PYTHON_ANSWER, "Hello! How can I help you today?")
    log = inspect_eval(foreign, model=model, log_dir=str(tmp_path), display="none")[0]
    out = tmp_path / "scored.eval"
    subprocess.run(
        [sys.executable, "-m", "inspect_ai", "score", log.location, "--scorer", "scorers/code_mode.py",
         "--output-file", str(out), "--display", "none"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    )
    scored = read_eval_log(str(out))
    values = sorted(s.scores["code_mode"].value for s in scored.samples)
    assert values == [0.0, 1.0]
    metrics = scored.results.scores[-1].metrics
    assert metrics["mean"].value == 0.5 and metrics["(none)"].value == 0.5
