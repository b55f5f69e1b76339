"""Tokenisation with the model's chat template, loss on response tokens only, and batching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from zofed.data.examples import Example

if TYPE_CHECKING:
    import torch

IGNORE = -100
# No tokenizer averages anywhere near this many characters a token, so text beyond
# max_length × CHARS_PER_TOKEN characters cannot survive truncation: it is cut before tokenising,
# and one huge row costs what a max_length row costs (a 200 MB row would make the tokenizer ask for GBs).
CHARS_PER_TOKEN = 16


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens: the loss covers the response (and end-of-turn) only


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


def _split_ids(tokenizer, example: Example, system_prompt: str | None, max_length: int) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) for one example, its texts cut to what max_length tokens can keep."""
    response = _head(example.response, max_length)
    if getattr(tokenizer, "chat_template", None):
        messages = _with_system(_turns(example, max_length), system_prompt)
        prompt_ids = _ids(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
        full_ids = _ids(
            tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=True)
        )
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            return prompt_ids, full_ids[len(prompt_ids) :]
    else:
        prompt_ids = _plain_ids(tokenizer, _turns(example, max_length))
    # No template, or one whose prompt is not a prefix of the conversation: plain concatenation.
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, response_ids


def tokenize_example(tokenizer, example: Example, max_length: int, system_prompt: str | None = None) -> TokenizedExample:
    """Truncate the prompt from the left first, so the response (what is learnt) survives."""
    prompt_ids, response_ids = _split_ids(tokenizer, example, system_prompt, max_length)
    response_ids = response_ids[:max_length]
    keep_prompt = max_length - len(response_ids)
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - keep_prompt) :] if keep_prompt > 0 else []
    return TokenizedExample(prompt_ids + response_ids, [IGNORE] * len(prompt_ids) + response_ids)


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
