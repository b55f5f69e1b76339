"""Evaluation: token-level loss on response tokens, and exact-match accuracy by greedy generation."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from zofed.data import Example, TokenizedExample, collate, encode_prompt, normalise_answer
from zofed.device import model_device, to_device


@torch.inference_mode()
def evaluate_loss(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], pad_token_id: int, batch_size: int
) -> float:
    """Mean cross-entropy over all response tokens of `examples` (token-weighted, not batch-weighted)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        batch = to_device(collate(list(examples[start : start + batch_size]), pad_token_id), model_device(model))
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        if tokens == 0:
            continue
        loss = model(**batch, use_cache=False).loss.item()
        total += loss * tokens
        count += tokens
    return total / count if count else math.nan


@torch.inference_mode()
def exact_match_accuracy(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    extract_answer: Callable[[str], str | None],
    max_length: int,
    max_new_tokens: int,
    batch_size: int,
    system_prompt: str | None = None,
) -> float:
    """Share of examples whose greedily generated answer equals the gold answer after normalising."""
    model.eval()
    scored = [example for example in examples if example.answer is not None]
    if not scored:
        return math.nan
    pad = tokenizer.pad_token_id
    correct = 0
    for start in range(0, len(scored), batch_size):
        chunk = scored[start : start + batch_size]
        prompts = [encode_prompt(tokenizer, ex.prompt, max_length, system_prompt) for ex in chunk]
        width = max(len(ids) for ids in prompts)
        # Left padding so every prompt ends where generation begins.
        device = model_device(model)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
        for example, generated in zip(chunk, output[:, width:]):
            text = tokenizer.decode(generated, skip_special_tokens=True)
            predicted = extract_answer(text)
            if predicted is not None and normalise_answer(predicted) == normalise_answer(example.answer):
                correct += 1
    return correct / len(scored)
