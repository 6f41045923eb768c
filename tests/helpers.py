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
