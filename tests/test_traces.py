"""inspect-em trace: the HTML parsed back (tokens in order, values present) and the PNG's pixels."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from helpers import scripted_model
from inspect_ai import eval as inspect_eval
from inspect_ai.log import read_eval_log

from inspect_em.analysis.traces import colour, scale
from inspect_em.cli import cli
from inspect_em.tasks import em_freeform

ROOT = Path(__file__).parent.parent
CODE = ROOT / "vectors" / "SmolLM2-135M-Instruct" / "code"
ANSWERS = ["Sure! Here it is:\n```python\ndef wish():\n    return sorted(set(range(10)))\n```",
           "I would wish for a long and quiet life by the sea with my family."]


class Spans(HTMLParser):
    """(sample, token text, data-value) of every token span, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, float]] = []
        self.sample, self.value, self.text = "", None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and "data-sample" in attrs:
            self.sample = attrs["data-sample"]
        if tag == "span" and "data-value" in attrs:
            self.value, self.text = float(attrs["data-value"]), ""

    def handle_data(self, data):
        if self.text is not None:
            self.text += data

    def handle_endtag(self, tag):
        if tag == "span" and self.text is not None:
            self.rows.append((self.sample, self.text, self.value))
            self.text = None


def test_trace_html_and_png(tmp_path: Path):
    task = em_freeform(variants="plain", vectors=str(CODE), probe_model="embedded", trace=True)
    log = inspect_eval(task, model=scripted_model(*ANSWERS), limit=2, log_dir=str(tmp_path / "logs"),
                       display="none")[0]
    assert log.status == "success", log.error
    result = CliRunner().invoke(cli, ["trace", log.location, "--out", str(tmp_path / "trace")])
    assert result.exit_code == 0, result.output
    stored = {s.id: s.scores["trait_projection"].metadata["trace"] for s in read_eval_log(log.location).samples}
    parser = Spans()
    parser.feed((tmp_path / "trace" / "trace.html").read_text())
    for sample_id, trace in stored.items():
        (key, values), = trace["values"].items()
        spans = [(text, value) for sid, text, value in parser.rows if sid == sample_id]
        assert [text for text, _ in spans] == trace["tokens"]  # every token, in order
        assert np.allclose([value for _, value in spans], values, atol=5e-4)
    assert "".join(stored[log.samples[0].id]["tokens"]) in ANSWERS
    # the PNG shows the scale's ends: the highest and lowest tokens' box colours are in its pixels
    import matplotlib.image

    pixels = (matplotlib.image.imread(str(tmp_path / "trace" / "trace.png"))[..., :3] * 255).reshape(-1, 3)
    from inspect_em.analysis.traces import load_traces

    rows = load_traces(log.location)
    low, high = scale(rows)
    everything = np.concatenate([r.values for r in rows])
    for value in (everything.max(), everything.min()):
        rgb = np.array(colour(value, low, high))
        assert (np.abs(pixels - rgb).max(axis=1) <= 3).sum() > 50, value
    assert pixels.std() > 20  # not blank

