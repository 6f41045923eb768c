"""Per-token projection traces people can look at: a self-contained HTML page and a PNG.

A log scored with ``trait_projection(trace=True)`` (``-T trace=true``) keeps, for each sample, the
answer's token strings and the per-token projections ``h_t · v̂`` of each trait at one layer (the
card's layer when selected). Each page row is one answer; every token is coloured by its
projection on one diverging scale shared by all rows (blue low, red high; the 2nd–98th percentile
of the shown values spans the scale), with the value on hover; a legend and the vector card's
summary sit on top.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inspect_em.directions.store import CardSummary
from inspect_em.errors import InspectEmError
from inspect_em.readout import parse_metric_key

COLORMAP = "coolwarm"


@dataclass
class TraceRow:
    """One answer's trace: ``tokens[i]`` has projection ``values[i]`` on ``key``."""

    sample_id: str
    epoch: int
    key: str
    tokens: list[str]
    values: list[float]
    card: CardSummary = field(default_factory=lambda: CardSummary(None, None, {}))
    position: str = ""

    @property
    def trait(self) -> str:
        parsed = parse_metric_key(self.key)
        return parsed.trait if parsed is not None else self.key

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.values else math.nan


def load_traces(log: str | Path, sample: str | None = None, trait: str | None = None,
                layer: int | None = None) -> list[TraceRow]:
    """The traces stored in a log, filtered by sample id, trait and layer (one key per answer)."""
    from inspect_ai.log import read_eval_log

    path = Path(log)
    if not path.is_file():
        raise InspectEmError(f"{log}: log not found")
    try:
        eval_log = read_eval_log(str(path))
    except Exception as e:
        raise InspectEmError(f"{log}: not an Inspect eval log ({type(e).__name__})") from None
    rows: list[TraceRow] = []
    seen_keys: set[str] = set()
    for s in eval_log.samples or []:
        if sample is not None and str(s.id) != str(sample):
            continue
        score = (s.scores or {}).get("trait_projection")
        meta = (score.metadata or {}) if score is not None else {}
        stored = meta.get("trace")
        if not stored:
            continue
        seen_keys.update(stored["values"])
        for key, values in stored["values"].items():
            parsed = parse_metric_key(key)
            if parsed is None or (trait is not None and parsed.trait != trait):
                continue
            if layer is not None and parsed.layer != layer:
                continue
            card = CardSummary.from_dict((meta.get("cards") or {}).get(parsed.trait) or {})
            rows.append(TraceRow(str(s.id), int(s.epoch), key, list(stored["tokens"])[:len(values)],
                                 [float(v) for v in values], card, str(meta.get("position", ""))))
            break
    if not rows:
        why = f"traced keys are {', '.join(sorted(seen_keys))}" if seen_keys else \
            "no per-token traces in this log (evaluate with -T trace=true)"
        raise InspectEmError(f"{log}: no trace matches (sample={sample}, trait={trait}, layer={layer}); {why}")
    return rows


def scale(rows: Sequence[TraceRow]) -> tuple[float, float]:
    """The colour scale's ends: the 2nd and 98th percentiles of every shown value."""
    values = np.concatenate([np.asarray(r.values, dtype=float) for r in rows])
    low, high = (float(x) for x in np.percentile(values, [2, 98]))
    return (low, high) if high > low else (low - 1.0, low + 1.0)


def colour(value: float, low: float, high: float) -> tuple[int, int, int]:
    """RGB (0–255) of ``value`` on the shared diverging scale."""
    from matplotlib import colormaps

    r, g, b, _ = colormaps[COLORMAP](min(max((value - low) / (high - low), 0.0), 1.0))
    return round(r * 255), round(g * 255), round(b * 255)


def write_html(rows: Sequence[TraceRow], path: Path, title: str) -> None:
    """A self-contained page: legend, card summary, one row of coloured tokens per answer."""
    low, high = scale(rows)
    gradient = ", ".join(f"rgb{colour(low + (high - low) * i / 10, low, high)}" for i in range(11))
    cards = {r.trait: r.card for r in rows}
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:70em} .row{margin:1em 0;padding:.5em;"
        "border-top:1px solid #ccc} .tokens{font-family:monospace;white-space:pre-wrap;line-height:1.8} "
        ".t{border-radius:3px;padding:1px 0} .legend{height:14px;width:320px;display:inline-block;"
        f"background:linear-gradient(to right,{gradient})}} .meta{{color:#555;font-size:90%}}",
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Colour: the per-token projection h·v̂ (blue low, red high); scale {low:.2f} "
        f"<span class='legend'></span> {high:.2f} (2nd–98th percentile of the values shown). "
        "Hover a token for its value.</p>",
        "<table class='cards'><tr><th>trait</th><th>vectors</th><th>fitted at</th><th>card layer</th>"
        "<th>layer choice</th></tr>",
    ]
    for trait, card in cards.items():
        parts.append("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in (
            trait, card.path, card.position, card.best_layer, card.layer_choice)) + "</tr>")
    parts.append("</table>")
    for r in rows:
        parts.append(f"<div class='row' data-sample='{html.escape(r.sample_id)}' data-key='{html.escape(r.key)}'>"
                     f"<div class='meta'>sample {html.escape(r.sample_id)} (epoch {r.epoch}) · {html.escape(r.key)}"
                     f" · read at {html.escape(r.position)} · mean {r.mean:.2f}</div><div class='tokens'>")
        for token, value in zip(r.tokens, r.values, strict=False):
            rgb = colour(value, low, high)
            parts.append(f"<span class='t' style='background:rgb{rgb}' data-value='{value:.3f}' "
                         f"title='{html.escape(repr(token))}: {value:.3f}'>{html.escape(token)}</span>")
        parts.append("</div></div>")
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")


def write_png(rows: Sequence[TraceRow], path: Path, title: str, width_chars: int = 100) -> None:
    """The same rows as a picture: monospace tokens on coloured boxes, wrapped, with a colour bar."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    low, high = scale(rows)
    layout: list[tuple[float, float, str, float]] = []  # x, line, text, value
    line = 0.0
    headers: list[tuple[float, str]] = []
    for r in rows:
        headers.append((line, f"{r.sample_id} (epoch {r.epoch}) · {r.key} · mean {r.mean:.2f}"))
        line += 1
        x = 0.0
        for token, value in zip(r.tokens, r.values, strict=False):
            text = token.replace("\n", "⏎").replace("\t", " ")
            if x + len(text) > width_chars:
                line, x = line + 1, 0.0
            layout.append((x, line, text, value))
            x += max(len(text), 1)
        line += 1.6
    height = 1.2 + 0.22 * line
    fig = Figure(figsize=(12, height))
    ax = fig.add_axes((0.01, 0.08, 0.98, 0.88 - 0.3 / height))
    ax.set_xlim(0, width_chars)
    ax.set_ylim(line, -0.5)
    ax.axis("off")
    for y, text in headers:
        ax.text(0, y, text, fontsize=7, color="#333", va="center")
    for x, y, text, value in layout:
        ax.add_patch(Rectangle((x, y - 0.45), max(len(text), 1), 0.9, color=[c / 255 for c in colour(value, low,
                                                                                                       high)]))
        ax.text(x, y, text, fontsize=7, family="monospace", va="center")
    fig.suptitle(title, fontsize=9)
    bar = fig.add_axes((0.3, 0.02, 0.4, 0.2 / height))
    fig.colorbar(ScalarMappable(Normalize(low, high), colormaps[COLORMAP]), cax=bar, orientation="horizontal",
                 label="projection h·v̂")
    fig.savefig(path, dpi=110)


def write_trace(log: str | Path, out: str | Path | None = None, *, sample: str | None = None,
                trait: str | None = None, layer: int | None = None, force: bool = False) -> Path:
    """``trace.html`` and ``trace.png`` for a log's traces, in ``out`` (default: beside the log)."""
    from inspect_em.util.paths import atomic_output

    rows = load_traces(log, sample, trait, layer)
    log = Path(log)
    out = Path(out) if out is not None else log.with_name(f"{log.stem}-trace")
    title = f"{rows[0].trait} trace · {log.name}"
    config = {"log": str(log.resolve()), "sample": sample, "trait": trait, "layer": layer}
    with atomic_output(out, command="trace", config=config, inputs=[log], force=force) as tmp:
        write_html(rows, tmp / "trace.html", title)
        write_png(rows, tmp / "trace.png", title)
    return out
