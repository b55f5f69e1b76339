"""`zofed generate`: answers from a run's weights, formatted as training formatted its prompts."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from zofed.config import RunConfig
from zofed.data import encode_conversation, get_task
from zofed.llm import LoadedModel

DEFAULT_MAX_NEW_TOKENS = 128


@torch.inference_mode()
def reply(
    loaded: LoadedModel, config: RunConfig, turns: list[dict[str, str]], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
) -> str:
    """The model's greedy answer to the last user turn, with the run's chat template and system prompt."""
    tokenizer = loaded.tokenizer
    max_length = config.data.max_length or get_task(config.task).default_max_length
    ids = encode_conversation(tokenizer, turns, max_length, config.data.system_prompt)
    output = loaded.model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,  # the runtime turns it off for training forwards; generation wants it
    )
    return tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True).strip()


def chat(
    loaded: LoadedModel, config: RunConfig, lines: Iterable[str], answer: Callable[[str], None],
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> list[dict[str, str]]:
    """One turn per non-empty line of `lines`, each answered with the whole conversation so far."""
    turns: list[dict[str, str]] = []
    for line in lines:
        if not line.strip():
            continue
        turns.append({"role": "user", "content": line.strip()})
        text = reply(loaded, config, turns, max_new_tokens)
        turns.append({"role": "assistant", "content": text})
        answer(text)
    return turns
