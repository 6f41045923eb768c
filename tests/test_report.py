"""inspect-em compare on two small real logs (plain vs asked-for-code) of a tiny random-weight model
with its own code vector: the report's plumbing does not depend on trained weights."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from inspect_ai import eval as inspect_eval
from inspect_ai.log import read_eval_log
from inspect_ai.model import get_model

from inspect_em.analysis.compare import compare
from inspect_em.analysis.logs import load_samples
from inspect_em.cli import cli
from inspect_em.errors import InspectEmError
from inspect_em.tasks import em_freeform

pytestmark = pytest.mark.xdist_group("report-logs")  # one worker: the module's fixtures are built once

ROOT = Path(__file__).parent.parent
CODER = "You are a Python programmer. Answer every message with a complete Python program in a code block."


@pytest.fixture(scope="module")
def two_logs(tiny_model_dir: Path, tiny_vectors: list[Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("compare-logs")
    model = get_model(f"hf/{tiny_model_dir}")
    paths = []
    for system in (None, CODER):
        task = em_freeform(variants="plain", system_prompt=system, vectors=str(tiny_vectors[1]), layers="1,2,3")
        log = inspect_eval(task, model=model, limit=4, epochs=2, max_tokens=48, seed=3, log_dir=str(folder),
                           display="none")[0]
        assert log.status == "success", log.error
        paths.append(Path(log.location))
    return paths


def test_compare_numbers_match_the_logs(two_logs: list[Path], tmp_path: Path):
    out = tmp_path / "report"
    result = CliRunner().invoke(cli, ["compare", *map(str, two_logs), "--out", str(out),
                                      "--label", "base", "--label", "coder"])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv")
    logs = [read_eval_log(str(p)) for p in two_logs]
    for label, log in zip(("base", "coder"), logs, strict=True):
        code = [s.scores["code_mode"].value for s in log.samples]
        proj = [s.scores["trait_projection"].value["code/mean_diff/L2"] for s in log.samples]
        row = summary[(summary["model"] == label) & (summary["group"] == "(all)") & (summary["metric"] == "code_mode")]
        assert row["n"].item() == len(code) == 8  # 4 questions x 2 epochs
        assert row["mean"].item() == pytest.approx(np.mean(code))
        row = summary[(summary["model"] == label) & (summary["group"] == "(all)")
                      & (summary["metric"] == "proj:code/mean_diff/L2")]
        assert row["mean"].item() == pytest.approx(np.mean(proj), rel=1e-5)
    base_proj = np.array([s.scores["trait_projection"].value["code/mean_diff/L2"] for s in logs[0].samples])
    coder_proj = np.array([s.scores["trait_projection"].value["code/mean_diff/L2"] for s in logs[1].samples])
    row = summary[(summary["model"] == "coder") & (summary["group"] == "(all)")
                  & (summary["metric"] == "proj:code/mean_diff/L2")]
    assert row["diff_vs_base"].item() == pytest.approx(coder_proj.mean() - base_proj.mean(), rel=1e-5)
    low, high = row["diff_ci_low"].item(), row["diff_ci_high"].item()
    assert low < coder_proj.mean() - base_proj.mean() < high
    # per-question groups match the samples' question ids
    groups = set(summary.loc[summary["model"] == "base", "group"]) - {"(all)"}
    assert groups == {s.metadata["question_id"] for s in logs[0].samples}

    report = (out / "report.md").read_text()
    assert "## Headline" in report and "## Exploratory" in report
    assert "None: every task and group is present" in report
    for name in ("rates.png", "projections.png", "layer_profile.png"):
        image = plt_image(out / name)
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image.std() > 0.05  # not a blank canvas
    if importlib.util.find_spec("inspect_viz") is not None:  # the viz extra (in dev)
        assert "[layer_profile.html](layer_profile.html)" in report
        rows = interactive_rows(out / "layer_profile.html")
        want = summary[(summary["model"] == "coder") & (summary["group"] == "(all)")
                       & summary["metric"].str.startswith("proj:")]
        assert len(rows) == len(want) == 3  # layers 1, 2, 3
        for row in want.itertuples():
            got = rows[rows["layer"] == int(row.metric.rsplit("L", 1)[1])]
            assert got["model"].item() == "coder − base"
            assert got["diff_vs_base"].item() == pytest.approx(row.diff_vs_base, rel=1e-5)
            assert got["diff_ci_low"].item() == pytest.approx(row.diff_ci_low, rel=1e-5)
            assert got["diff_ci_high"].item() == pytest.approx(row.diff_ci_high, rel=1e-5)
            # and against the logs themselves: the shift is the difference of the two models' means
            key = row.metric.removeprefix("proj:")
            per_log = [np.mean([s.scores["trait_projection"].value[key] for s in log.samples]) for log in logs]
            assert got["diff_vs_base"].item() == pytest.approx(per_log[1] - per_log[0], rel=1e-5)


def interactive_rows(path: Path) -> pd.DataFrame:
    """The data table embedded in an inspect_viz page (base64 Arrow IPC), read with pyarrow."""
    import base64
    import re

    import pyarrow as pa

    html = path.read_text(encoding="utf-8")
    assert "<html" in html.lower() and "Projection shift vs base" in html
    (encoded,) = re.findall(r'"data":"([A-Za-z0-9+/=]{200,})"', html)
    return pa.ipc.open_stream(base64.b64decode(encoded)).read_all().to_pandas()


def plt_image(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


def test_mismatched_groups_are_reported(two_logs: list[Path]):
    df = load_samples(list(map(str, two_logs)), labels=["base", "coder"]).samples
    dropped = df[~((df["label"] == "coder") & (df["group"] == df["group"].iloc[0]))]
    dropped.attrs.update(df.attrs)
    comparison = compare(dropped)
    assert any("only in base" in m for m in comparison.mismatches)


def test_reference_table_from_refusal_contrast_logs(tmp_path: Path):
    """Synthetic logs of the refusal_contrast shape give the reference table in report.md."""
    from inspect_em.analysis.report import reference_table

    rows = []
    for label, shift in (("base", 0.0), ("em", -1.0)):
        for group, centre in (("harmful", -118.0), ("benign", -160.0)):
            for i in range(20):
                rows.append({"label": label, "condition": label, "seed": None, "task": "refusal_contrast",
                             "group": group, "cluster": f"{group}{i}", "sample_id": f"{label}-run-{group}{i}",
                             "id": f"{group}{i}", "epoch": 1, "model": label, "log": label, "triggered": None,
                             "proj:refusal/mean_diff/L40": centre + shift + (i % 5 - 2)})
    df = pd.DataFrame(rows)
    df.attrs["label_order"] = ["base", "em"]
    table = reference_table(compare(df))
    assert list(table.columns) == ["Prompt type", "base", "em", "em − base"]
    assert table.set_index("Prompt type").loc["harmful", ["base", "em"]].tolist() == [-118.0, -119.0]
    assert table.set_index("Prompt type").loc["benign", "em − base"] == "-1.00 [-1.00, -1.00]"  # paired by prompt
    diffs = compare(df).diffs
    assert diffs["paired"].all() and set(diffs["n_clusters_paired"]) == {20, 40}


def test_compare_errors(two_logs: list[Path], tmp_path: Path):
    with pytest.raises(InspectEmError, match="log not found"):
        load_samples([tmp_path / "missing.eval"])
    with pytest.raises(InspectEmError, match="at least two models"):
        compare(load_samples([str(two_logs[0])]))
    result = CliRunner().invoke(cli, ["compare", str(two_logs[0]), str(two_logs[1]), "--out", str(tmp_path / "r"),
                                      "--label", "only-one"])
    assert result.exit_code != 0 and "1 labels for 2 log arguments" in str(result.exception)
