"""Test helpers: scripted mockllm models that never touch the network; the CLI in a fresh process."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

from inspect_ai.model import Logprob, Logprobs, Model, ModelOutput, ModelUsage, TopLogprob, get_model


def scripted_output(text: str) -> ModelOutput:
    """A mockllm reply with usage filled in (else mockllm counts tokens with tiktoken,
    which downloads its vocabulary)."""
    output = ModelOutput.from_content("mockllm/model", text)
    output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return output


def scripted_model(*texts: str, repeat: int = 1) -> Model:
    """``mockllm/model`` answering ``texts`` in order (the sequence repeated ``repeat`` times)."""
    return get_model("mockllm/model", custom_outputs=[scripted_output(t) for t in texts] * repeat)


def decode(tokens: list[str]) -> str:
    """What a provider's detokenizer makes of raw tokens: markers become spaces, special tokens
    (``<|im_end|>``, ``</s>``) disappear."""
    text = "".join(t for t in tokens if not re.fullmatch(r"<\|?/?[A-Za-z_]+\|?>", t))
    return text.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n").strip()


def token_logprobs_output(positions: list[list[tuple[str, float]]], text: str | None = None) -> ModelOutput:
    """A mockllm reply with one :class:`Logprob` per generated position, built the way Inspect's
    hf provider builds them: each position's ``top_logprobs`` are its ``(token, probability)``
    alternatives, and the generated token is the most likely one (greedy). ``text`` defaults to
    the decoded generated tokens."""
    chosen = [max(top, key=lambda t: t[1]) for top in positions]
    output = scripted_output(decode([t for t, _ in chosen]) if text is None else text)
    output.choices[0].logprobs = Logprobs(content=[
        Logprob(token=token, logprob=math.log(p),
                top_logprobs=[TopLogprob(token=t, logprob=math.log(q)) for t, q in top])
        for (token, p), top in zip(chosen, positions, strict=True)
    ])
    return output


def logprob_output(top: list[tuple[str, float]]) -> ModelOutput:
    """A mockllm reply whose first (and only) token carries ``top`` as (token, probability) pairs."""
    return token_logprobs_output([top])


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``inspect-em ARGS`` in a fresh process (the package the interpreter imports)."""
    return subprocess.run([sys.executable, "-m", "inspect_em.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **({"PWD": str(cwd)} if cwd else {}), **(env or {})})


def cli_here(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``inspect-em ARGS`` in this process (no interpreter start-up or imports to pay again): stdout,
    stderr and the exit code captured as :func:`cli` does. For commands whose output the tests read,
    not for signals or import-time behaviour (use :func:`cli` there)."""
    import contextlib
    import io
    import signal

    from inspect_em.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    sigterm, here = signal.getsignal(signal.SIGTERM), Path.cwd()
    try:
        os.chdir(cwd or here)  # contextlib.chdir is Python 3.11+
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(list(args))
    except SystemExit as e:
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(here)
        signal.signal(signal.SIGTERM, sigterm)
    return subprocess.CompletedProcess(["inspect-em", *args], code, out.getvalue(), err.getvalue())


def one_line(proc: subprocess.CompletedProcess, *parts: str) -> None:
    """The command failed with exit 2 and one ``error:`` line holding every part."""
    assert proc.returncode == 2, proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for part in parts:
        assert part in lines[0], lines[0]
