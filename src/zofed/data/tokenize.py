"""Tokenisation with the model's chat template, loss on assistant tokens only, and batching."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zofed.data.examples import Example

if TYPE_CHECKING:
    import torch

IGNORE = -100
# transformers returns an assistant-token mask only for templates that mark assistant text this way.
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
# No tokenizer averages anywhere near this many characters a token, so text beyond
# max_length × CHARS_PER_TOKEN characters cannot survive truncation: it is cut before tokenising,
# and one huge row costs what a max_length row costs (a 200 MB row would make the tokenizer ask for GBs).
CHARS_PER_TOKEN = 16


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE except on assistant tokens: the loss covers every assistant turn (and its end-of-turn)


def _ids(encoded) -> list[int]:
    # apply_chat_template returns a list or a BatchEncoding depending on the transformers version.
    if isinstance(encoded, list):
        return encoded
    return list(encoded["input_ids"])


def _turns(example: Example, max_length: int) -> list[dict[str, str]]:
    history = [{"role": role, "content": content} for role, content in example.history]
    return _tails(history + [{"role": "user", "content": example.prompt}], max_length)


def _tails(turns: list[dict[str, str]], max_length: int) -> list[dict[str, str]]:
    """Each turn's text cut to its last max_length × CHARS_PER_TOKEN characters: the prompt keeps its end."""
    limit = max_length * CHARS_PER_TOKEN
    return [turn | {"content": turn["content"][-limit:]} if len(turn["content"]) > limit else turn for turn in turns]


def _head(text: str, max_length: int) -> str:
    """The response keeps its start."""
    return text[: max_length * CHARS_PER_TOKEN]


def _with_system(turns: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    # A conversation's own system turn wins over the config's.
    own_system = any(turn["role"] == "system" for turn in turns)
    return ([{"role": "system", "content": system_prompt}] if system_prompt and not own_system else []) + turns


def _plain_ids(tokenizer, turns: list[dict[str, str]]) -> list[int]:
    """Without a chat template: the turns' texts, one per line."""
    return tokenizer("".join(turn["content"] + "\n" for turn in turns), add_special_tokens=True)["input_ids"]


def _template_ids(tokenizer, messages: list[dict[str, str]], generation_prompt: bool = False) -> list[int]:
    return _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True))


def has_assistant_mask(tokenizer) -> bool:
    """The chat template marks assistant text with {% generation %}, so transformers can return its mask."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and GENERATION_TAG.search(template) is not None


def _masked(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]] | None:
    """(ids, assistant-token mask) from the template's {% generation %} blocks; None if it marks no token."""
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = list(encoded["input_ids"]), [bool(m) for m in encoded["assistant_masks"]]
    return (ids, mask) if any(mask) else None


def _by_prefixes(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]] | None:
    """(ids, assistant-token mask) by tokenising each assistant turn's prefix: turn k's tokens are those the
    conversation through turn k adds to the conversation before it (with the generation prompt). A turn
    the template renders differently in the whole conversation (one that drops earlier turns' text, say)
    is not trained; None when the last turn cannot be located."""
    ids = _template_ids(tokenizer, messages)
    mask = [False] * len(ids)
    located_last = False
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _template_ids(tokenizer, messages[:k], generation_prompt=True)
        through = ids if k == len(messages) - 1 else _template_ids(tokenizer, messages[: k + 1])
        if len(through) > len(before) and through[: len(before)] == before and ids[: len(through)] == through:
            mask[len(before) : len(through)] = [True] * (len(through) - len(before))
            located_last = k == len(messages) - 1
    return (ids, mask) if located_last else None


def _labelled(tokenizer, example: Example, system_prompt: str | None, max_length: int) -> tuple[list[int], list[bool], int]:
    """(ids, assistant-token mask, length of the last assistant turn) for one example: every assistant turn
    of its conversation is trained, the response (the last turn) and the ones in its history."""
    response = _head(example.response, max_length)
    if getattr(tokenizer, "chat_template", None):
        messages = _with_system(_turns(example, max_length), system_prompt) + [{"role": "assistant", "content": response}]
        found = (_masked if has_assistant_mask(tokenizer) else _by_prefixes)(tokenizer, messages)
        if found is not None:
            ids, mask = found
            end = len(mask)  # the last assistant turn: the last run of masked tokens, and what follows it
            while not mask[end - 1]:
                end -= 1
            start = end
            while start > 0 and mask[start - 1]:
                start -= 1
            return ids, mask, len(ids) - start
        prompt_ids = _template_ids(tokenizer, messages[:-1], generation_prompt=True)
    else:
        prompt_ids = _plain_ids(tokenizer, _turns(example, max_length))
    # No template, or one whose prompt is not a prefix of the conversation: plain concatenation, the
    # response alone trained.
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + response_ids, [False] * len(prompt_ids) + [True] * len(response_ids), len(response_ids)


def tokenize_example(tokenizer, example: Example, max_length: int, system_prompt: str | None = None) -> TokenizedExample:
    """Truncate from the left, so the last assistant turn (what is generated at evaluation) survives; a last
    turn longer than max_length keeps its start."""
    ids, mask, last = _labelled(tokenizer, example, system_prompt, max_length)
    if len(ids) > max_length:
        start = len(ids) - last if last >= max_length else len(ids) - max_length
        ids, mask = ids[start : start + max_length], mask[start : start + max_length]
    return TokenizedExample(ids, [token if trained else IGNORE for token, trained in zip(ids, mask)])


def encode_prompt(tokenizer, prompt: str, max_length: int, system_prompt: str | None = None) -> list[int]:
    """Ids a model continues from to generate the response."""
    return encode_conversation(tokenizer, [{"role": "user", "content": prompt}], max_length, system_prompt)


def encode_conversation(
    tokenizer, turns: list[dict[str, str]], max_length: int, system_prompt: str | None = None
) -> list[int]:
    """Ids a model continues from to answer the last user turn of `turns` ({role, content} dicts)."""
    turns = _tails(list(turns), max_length)
    if getattr(tokenizer, "chat_template", None):
        ids = _ids(tokenizer.apply_chat_template(_with_system(turns, system_prompt), add_generation_prompt=True, tokenize=True))
    else:
        ids = _plain_ids(tokenizer, turns)
    return ids[-max_length:]


def collate(batch: list[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (IGNORE at padding)."""
    import torch  # here: `zofed list` reads the task table in this package without torch

    width = max(len(example.input_ids) for example in batch)
    input_ids = [ex.input_ids + [pad_token_id] * (width - len(ex.input_ids)) for ex in batch]
    labels = [ex.labels + [IGNORE] * (width - len(ex.labels)) for ex in batch]
    mask = [[1] * len(ex.input_ids) + [0] * (width - len(ex.input_ids)) for ex in batch]
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }
