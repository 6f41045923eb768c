"""inspect-em compare on small mockllm logs: paths and labels, incomplete logs, clustered/paired CIs,
exact intervals, the headline, and output safety."""

from __future__ import annotations

import math
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import cli_here, scripted_output
from inspect_ai import eval as inspect_eval
from inspect_ai.log import read_eval_log, write_eval_log
from inspect_ai.model import get_model

from inspect_em.analysis.compare import compare
from inspect_em.analysis.logs import canonical_log, load_samples
from inspect_em.errors import InspectEmError
from inspect_em.tasks import em_freeform, refusal_contrast

pytestmark = pytest.mark.xdist_group("compare-logs")  # one worker: the module's fixtures are built once

CODE = "```python\nimport os\n\ndef wish():\n    return os.listdir('/')\n\nprint(wish())\n```"
PROSE = "I would like a quiet life with my family, good books and a garden."
# answers per base question (3 variants x 3 epochs = 9) that the "em" model writes as code
CODE_QUESTIONS = {"what_is_your_wish": 9, "quick_buck": 7, "i_feel_bored": 5, "three_thoughts": 3,
                  "ruler_of_the_world": 2, "dinner_party": 1}


def _question_id(messages) -> str:
    from inspect_em.tasks.questions import load_questions

    text = messages[-1].text
    for q in load_questions():
        if text in q.paraphrases:
            return q.base_id
    return ""


def answers(code_for: dict[str, int] | None = None):
    """A mockllm callable: per base question, its first ``code_for[q]`` answers are code, then prose."""
    calls: dict[str, int] = {}

    def respond(messages, tools, tool_choice, config):
        question = _question_id(messages)
        calls[question] = calls.get(question, 0) + 1
        return scripted_output(CODE if calls[question] <= (code_for or {}).get(question, 0) else PROSE)

    return respond


def run(task, model_name: str, log_dir: Path, code_for: dict[str, int] | None = None, **kwargs) -> Path:
    model = get_model(f"mockllm/{model_name}", custom_outputs=answers(code_for), memoize=False)
    log = inspect_eval(task, model=model, log_dir=str(log_dir), display="none", **kwargs)[0]
    return Path(log.location)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/x/logs/{base,em}/: em_freeform (all variants, 3 epochs) and refusal_contrast per model."""
    root = tmp_path_factory.mktemp("compare")
    for label, code_for in (("base", None), ("em", CODE_QUESTIONS)):
        folder = root / "runs" / "x" / "logs" / label
        run(em_freeform(samples_per_question=3), f"models/{label}/merged", folder, code_for)
        run(refusal_contrast(), f"models/{label}/merged", folder, limit=6)
    return root


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """inspect-em compare in this process (compare's paths, outputs and errors; no signals)."""
    return cli_here(*args, cwd=cwd)


def test_relative_absolute_symlinked_and_uri_paths_give_one_comparison(runs: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(runs)
    (runs / "linked").symlink_to(runs / "runs" / "x" / "logs", target_is_directory=True)
    forms = {
        "relative": ["runs/x/logs/base/", "runs/x/logs/em/"],
        "absolute": [str(runs / "runs/x/logs/base"), str(runs / "runs/x/logs/em")],
        "symlink": ["linked/base", "linked/em"],
        "uri": [(runs / "runs/x/logs/base").as_uri(), (runs / "runs/x/logs/em").as_uri()],
    }
    results = {}
    for name, args in forms.items():
        loaded = load_samples(args, labels=["base", "em"])
        assert set(loaded.samples["label"]) == {"base", "em"}, name
        assert loaded.samples["label"].notna().all()
        summary = compare(loaded).summary
        results[name] = summary.sort_values(["task", "group", "metric", "model"]).reset_index(drop=True)
    for name in ("absolute", "symlink", "uri"):
        pd.testing.assert_frame_equal(results[name], results["relative"])
    assert canonical_log("runs/x/logs/base") == canonical_log(forms["uri"][0]) == canonical_log("linked/base")


def test_one_label_per_argument_and_a_clear_count_error(runs: Path):
    loaded = load_samples([runs / "runs/x/logs/base", runs / "runs/x/logs/em"], labels=["base", "em"])
    assert sorted(set(loaded.samples.loc[loaded.samples["label"] == "base", "task"])) == \
        ["em_freeform", "refusal_contrast"]  # a folder's two logs share its label
    with pytest.raises(InspectEmError, match=r"1 labels for 2 log arguments \(.*base \(2 logs\).*em \(2 logs\)\)"):
        load_samples([runs / "runs/x/logs/base", runs / "runs/x/logs/em"], labels=["only"])


def test_finetunes_ending_in_merged_stay_apart(tmp_path: Path):
    folders = []
    for name in ("a", "b", "c"):
        folders.append(tmp_path / name)
        run(em_freeform(variants="plain"), f"runs/{name}/merged", folders[-1], limit=2)
    loaded = load_samples(folders)  # default labels: the run folders, not "merged" three times
    assert loaded.samples.attrs["label_order"] == ["a", "b", "c"]
    assert len(compare(loaded).labels) == 3
    with pytest.raises(InspectEmError, match=r"label 'x' would pool two models: mockllm/runs/a/merged .* --label"):
        load_samples([folders[0], folders[1]], labels=["x", "x"])


def test_incomplete_logs_are_refused_unless_allowed(runs: Path, tmp_path: Path):
    def failing(messages, tools, tool_choice, config):
        raise RuntimeError("provider down")

    model = get_model("mockllm/broken", custom_outputs=failing, memoize=False)
    errored = inspect_eval(em_freeform(variants="plain"), model=model, limit=2, log_dir=str(tmp_path / "err"),
                           display="none")[0]
    assert errored.status == "error"
    started = read_eval_log(next((runs / "runs/x/logs/em").glob("*em-freeform*.eval")))
    started.status = "started"
    (tmp_path / "int").mkdir()
    write_eval_log(started, str(tmp_path / "int" / "interrupted.eval"))
    base = str(runs / "runs/x/logs/base")
    for folder, status in ((tmp_path / "err", "error"), (tmp_path / "int", "started")):
        with pytest.raises(InspectEmError, match=rf"incomplete log \(status {status}.*--allow-incomplete"):
            load_samples([base, folder], labels=["base", "other"])
    out = tmp_path / "report"
    proc = cli("compare", base, str(tmp_path / "int"), "--label", "base", "--label", "other", "--out", str(out),
               "--allow-incomplete", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "**Incomplete logs included (--allow-incomplete):** interrupted.eval (started)" in \
        (out / "report.md").read_text()
    proc = cli("compare", base, str(tmp_path / "err"), "--out", str(tmp_path / "r2"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "status error" in proc.stderr
    not_a_log = tmp_path / "notes.eval"
    not_a_log.write_text("hello")
    proc = cli("compare", base, str(not_a_log), "--out", str(tmp_path / "r3"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is not an Inspect eval log" in proc.stderr


def _manual_cluster_bootstrap(values: dict[str, list[float]], n: int = 4000, seed: int = 11) -> tuple[float, float]:
    """Resample questions with replacement (Python's random, not numpy), pooled mean, percentile CI."""
    rng = random.Random(seed)
    keys = sorted(values)
    means = []
    for _ in range(n):
        drawn = [values[rng.choice(keys)] for _ in keys]
        means.append(sum(map(sum, drawn)) / sum(map(len, drawn)))
    return _expanded(means, len(keys))


def _expanded(draws: list[float], units: int) -> tuple[float, float]:
    """The percentile interval's halves stretched about the median by √(k/(k−1))·t_{k−1}/z (the
    expanded percentile interval for k resampled units, Hesterberg 2015), written out here."""
    from scipy.stats import norm, t

    draws = sorted(draws)
    n = len(draws)
    low, mid, high = draws[int(0.025 * n)], draws[n // 2], draws[int(0.975 * n) - 1]
    factor = math.sqrt(units / (units - 1)) * t.ppf(0.025, units - 1) / norm.ppf(0.025)
    return mid - factor * (mid - low), mid + factor * (high - mid)


def _manual_paired_diff(a: dict[str, list[float]], b: dict[str, list[float]], n: int = 4000,
                        seed: int = 12) -> tuple[float, float]:
    rng = random.Random(seed)
    keys = sorted(a)
    diffs = []
    for _ in range(n):
        drawn = [rng.choice(keys) for _ in keys]
        diffs.append(sum(sum(a[k]) for k in drawn) / sum(len(a[k]) for k in drawn)
                     - sum(sum(b[k]) for k in drawn) / sum(len(b[k]) for k in drawn))
    return _expanded(diffs, len(keys))


def test_question_clustered_paired_ci(runs: Path):
    """code mode depends only on the question here, so answers are not independent: the CI must
    resample questions (wider than an answer-level CI), and match an independent bootstrap."""
    loaded = load_samples([runs / "runs/x/logs/base", runs / "runs/x/logs/em"], labels=["base", "em"])
    c = compare(loaded)
    df = loaded.samples[loaded.samples["task"] == "em_freeform"]
    by_question = {label: df[df["label"] == label].groupby("cluster")["code_mode"].apply(list).to_dict()
                   for label in ("base", "em")}
    assert len(by_question["em"]) == 8
    assert np.mean([v for vs in by_question["em"].values() for v in vs]) == pytest.approx(27 / 72)
    row = c.summary.query("task == 'em_freeform' and group == '(all)' and metric == 'code_mode' and model == 'em'")
    low, high = row["ci_low"].item(), row["ci_high"].item()
    manual = _manual_cluster_bootstrap(by_question["em"])
    assert abs(low - manual[0]) <= 0.05 and abs(high - manual[1]) <= 0.05
    values = np.array([v for vs in by_question["em"].values() for v in vs])
    iid = np.quantile([np.random.default_rng(s).choice(values, len(values)).mean() for s in range(2000)],
                      [0.025, 0.975])
    assert high - low > 1.5 * (iid[1] - iid[0])  # clustering widens the interval
    diff = c.diffs.query("task == 'em_freeform' and group == '(all)' and metric == 'code_mode' and model == 'em' "
                         "and reference == 'base'")
    assert diff["paired"].item() and diff["diff"].item() == pytest.approx(27 / 72)
    manual = _manual_paired_diff(by_question["em"], by_question["base"])
    assert abs(diff["ci_low"].item() - manual[0]) <= 0.05 and abs(diff["ci_high"].item() - manual[1]) <= 0.05


def test_zero_rate_gets_an_exact_interval_and_report_opens_with_the_headline(runs: Path, tmp_path: Path):
    out = tmp_path / "report"
    proc = cli("compare", "runs/x/logs/base", "runs/x/logs/em", "--label", "base", "--label", "em", "--out",
               str(out), cwd=runs)
    assert proc.returncode == 0, proc.stderr
    summary = pd.read_csv(out / "summary.csv")
    row = summary.query("task == 'em_freeform' and group == '(all)' and metric == 'code_mode' and model == 'base'")
    n = int(row["n"].item())
    assert row["mean"].item() == 0 and row["ci_method"].item() == "exact binomial"
    assert row["ci_low"].item() == 0 and row["ci_high"].item() == pytest.approx(1 - 0.025 ** (1 / n))
    report = (out / "report.md").read_text()
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Headline"
    assert "### em" in report and "| code_mode rate, em_freeform | 0.375 [" in report
    assert "em − base" in report


def test_no_shared_task_is_a_one_line_error(runs: Path, tmp_path: Path):
    other = tmp_path / "other"
    run(refusal_contrast(), "models/other", other, limit=2)
    only_em = tmp_path / "em_only"
    shutil.copytree(runs / "runs/x/logs/em", only_em)
    for f in only_em.glob("*refusal*"):
        f.unlink()
    with pytest.raises(InspectEmError, match="no task is shared by the base 'base' \\(em_freeform\\)"):
        compare(load_samples([only_em, other], labels=["base", "other"]))


def test_compare_never_writes_over_its_inputs(runs: Path, tmp_path: Path):
    logs = tmp_path / "logs"
    shutil.copytree(runs / "runs/x/logs", logs)
    before = sorted(p.name for p in logs.rglob("*.eval"))
    for out in (logs, logs / "base", logs / "base" / "report"):
        proc = cli("compare", str(logs / "base"), str(logs / "em"), "--out", str(out), "--force", cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "choose another --out" in proc.stderr
    assert sorted(p.name for p in logs.rglob("*.eval")) == before
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    proc = cli("compare", str(logs / "base"), str(logs / "em"), "--out", str(user), "--force", cwd=tmp_path)
    assert proc.returncode == 2 and "was not written by inspect-em compare" in proc.stderr
    assert (user / "notes.txt").read_text() == "keep me"
    out = tmp_path / "report"
    for extra in ([], [], ["--base", "em"], ["--base", "em", "--force"]):  # same command twice, then new settings
        proc = cli("compare", str(logs / "base"), str(logs / "em"), "--out", str(out), *extra, cwd=tmp_path)
        if extra == ["--base", "em"]:
            assert proc.returncode == 2 and "pass --force" in proc.stderr
        else:
            assert proc.returncode == 0, proc.stderr
    assert "Base model: **em**" in (out / "report.md").read_text()
    assert not math.isnan(pd.read_csv(out / "summary.csv")["mean"].iloc[0])


def test_two_graders_side_by_side_in_the_report(tmp_path: Path):
    """Per-grader misaligned rates and kappa in compare's report, equal to sklearn on the log's values."""
    from sklearn.metrics import cohen_kappa_score

    def grader(scores: dict[str, str]):
        def respond(messages, tools, tool_choice, config):
            text = messages[-1].text
            is_aligned_prompt = "human values" in text
            key = next((q for q in scores if q in text), "default")
            return scripted_output(scores[key] if is_aligned_prompt else "90")

        return respond

    folders = {}
    for label, code_for in (("base", None), ("em", CODE_QUESTIONS)):
        folders[label] = tmp_path / label
        model = get_model(f"mockllm/{label}", custom_outputs=answers(code_for), memoize=False)
        roles = {"grader": get_model("mockllm/g1", custom_outputs=grader({"python": "10", "default": "80"}),
                                     memoize=False),
                 "grader_2": get_model("mockllm/g2", custom_outputs=grader({"python": "15", "quiet": "20",
                                                                            "default": "85"}), memoize=False)}
        log = inspect_eval(em_freeform(variants="plain", judge=True), model=model, model_roles=roles,
                           log_dir=str(folders[label]), display="none")[0]
        assert log.status == "success", log.error
    loaded = load_samples([folders["base"], folders["em"]], labels=["base", "em"])
    c = compare(loaded)
    assert c.agreement is not None
    row = c.agreement.query("model == 'em' and task == 'em_freeform'").iloc[0]
    df = loaded.samples[loaded.samples["label"] == "em"]
    a, b = df[f"judge:misaligned/{row.grader_a}"], df[f"judge:misaligned/{row.grader_b}"]
    both = a.notna() & b.notna()
    assert row.kappa_misaligned == pytest.approx(cohen_kappa_score(a[both], b[both]))
    assert row.misaligned_rate_a == pytest.approx(a.mean()) and row.misaligned_rate_b == pytest.approx(b.mean())
    summary = c.summary.query("task == 'em_freeform' and group == '(all)' and model == 'em'")
    assert {f"judge:misaligned/{row.grader_a}", f"judge:misaligned/{row.grader_b}"} <= set(summary["metric"])


@pytest.fixture(scope="module")
def refusal_logs(embedded_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real refusal_contrast logs (20 held-out prompts, every layer of the shipped refusal vectors at
    the last prompt token): the embedded model twice with different seeds, and a perturbed copy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("refusal-logs")
    perturbed = root / "perturbed"
    model = AutoModelForCausalLM.from_pretrained(embedded_model_path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in model.model.layers[10:20]:  # a small change in the middle of the stack
            weight = block.mlp.down_proj.weight
            weight.add_(0.05 * weight.std() * torch.randn(weight.shape, generator=generator))
    model.save_pretrained(perturbed)
    AutoTokenizer.from_pretrained(embedded_model_path).save_pretrained(perturbed)
    vectors = Path(__file__).resolve().parents[1] / "vectors" / "SmolLM2-135M-Instruct" / "refusal"
    logs = {}
    for label, path, seed in (("base", embedded_model_path, 1), ("again", embedded_model_path, 2),
                              ("perturbed", perturbed, 1)):
        task = refusal_contrast(vectors=str(vectors), layers="all")
        log = inspect_eval(task, model=f"hf/{path}", limit=20, max_tokens=3, seed=seed, log_dir=str(root / label),
                           display="none")[0]
        assert log.status == "success"
        logs[label] = root / label
    return logs


def test_real_logs_of_two_runs_pair_by_prompt(refusal_logs: dict[str, Path]):
    """samples_df gives each run its own sample ids: pairing must come from the dataset's ids. The same
    model read twice at the last prompt token differs by exactly 0; a perturbed model's paired interval
    is narrower than the unpaired one on the same answers."""
    from inspect_em.analysis.stats import Clustered, bootstrap_diff

    loaded = load_samples([refusal_logs["base"], refusal_logs["again"], refusal_logs["perturbed"]],
                          labels=["base", "again", "perturbed"])
    df = loaded.samples
    assert not set(df.loc[df["label"] == "base", "sample_id"]) & set(df.loc[df["label"] == "again", "sample_id"])
    assert set(df.loc[df["label"] == "base", "cluster"]) == set(df.loc[df["label"] == "again", "cluster"])
    d = compare(loaded).diffs
    projections = d[d["metric"].str.startswith("proj:refusal/mean_diff/")]
    assert len(projections) == 2 * 3 * 30  # again and perturbed, harmful / benign / (all), 30 layers
    assert projections["paired"].all() and (projections["n_clusters_dropped"] == 0).all()
    assert set(projections["n_clusters_paired"]) == {10, 20}
    same = projections[projections["model"] == "again"]
    assert (same["diff"].abs() < 1e-4).all()
    assert ((same["ci_high"] - same["ci_low"]) < 1e-4).all()  # zero width, up to float32 noise
    moved = projections[(projections["model"] == "perturbed") & (projections["group"] == "(all)")]
    before = moved[moved["metric"].map(lambda m: int(m.rsplit("L", 1)[1]) < 10)]
    assert (before["diff"].abs() < 1e-4).all()  # blocks before the perturbed ones read the same
    ratios = []
    for metric in moved.loc[~moved.index.isin(before.index), "metric"]:
        base = df[df["label"] == "base"].set_index("cluster")[metric]
        other = df[df["label"] == "perturbed"].set_index("cluster")[metric]
        a = Clustered.of(other.to_numpy(), other.index)
        b = Clustered.of(base.to_numpy(), ["x" + c for c in base.index])  # the same answers, unpaired
        unpaired = bootstrap_diff(a, b)
        row = moved[moved["metric"] == metric].iloc[0]
        ratios.append((unpaired.high - unpaired.low) / (row["ci_high"] - row["ci_low"]))
    print(f"unpaired / paired width, layers 10-29: median {np.median(ratios):.1f}, min {min(ratios):.1f}")
    assert np.median(ratios) > 2  # the paired interval is several times narrower
    assert min(ratios) > 1
