"""Test helpers: scripted mockllm models that never touch the network."""

from __future__ import annotations

import math
import re

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
