"""Test helpers: scripted mockllm models that never touch the network."""

from __future__ import annotations

from inspect_ai.model import Model, ModelOutput, ModelUsage, get_model


def scripted_output(text: str) -> ModelOutput:
    """A mockllm reply with usage filled in (else mockllm counts tokens with tiktoken,
    which downloads its vocabulary)."""
    output = ModelOutput.from_content("mockllm/model", text)
    output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return output


def scripted_model(*texts: str, repeat: int = 1) -> Model:
    """``mockllm/model`` answering ``texts`` in order (the sequence repeated ``repeat`` times)."""
    return get_model("mockllm/model", custom_outputs=[scripted_output(t) for t in texts] * repeat)


def logprob_output(top: list[tuple[str, float]]) -> ModelOutput:
    """A mockllm reply whose first token carries ``top`` as (token, probability) pairs."""
    import math

    from inspect_ai.model import Logprob, Logprobs, TopLogprob

    best = max(top, key=lambda t: t[1])
    output = scripted_output(best[0])
    output.choices[0].logprobs = Logprobs(content=[Logprob(
        token=best[0], logprob=math.log(best[1]),
        top_logprobs=[TopLogprob(token=t, logprob=math.log(p)) for t, p in top],
    )])
    return output
