"""Evaluation: token-level loss on response tokens, and metrics scored on greedily generated answers.

The metrics (`eval.metrics`):
- `loss`: mean cross-entropy over the test examples' response tokens.
- `exact_match`: the task's extracted answer equals the gold short answer after normalising.
- `rouge_l`: Rouge-L F-measure of the generation against the reference response, averaged over
  examples, as FedKSeed reports it (per example, greedy decoding, an empty generation scores 0).
  Scored by Google's `rouge-score` (a reimplementation of ROUGE-1.5.5), without stemming:
  it lower-cases and splits on anything that is not a letter or digit, where FedKSeed's `rouge`
  package splits on spaces only, so punctuation-heavy text can score a little differently.
- `gsm8k_answer`: GSM8K's final-answer accuracy. The model's answer is the first number after a
  `####` in its generation, or, when no `####` is followed by a number, the last number it wrote;
  it is right when it equals the number after the gold `####` once both are normalised (commas
  dropped, a leading `+` dropped, trailing zeros after the decimal point dropped: 1,000 = 1000.00).

All generation metrics share one batched greedy generation over the first `eval.accuracy_examples`
test examples, left-padded so every prompt ends where its answer begins.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

import torch

from zofed.data import Example, TaskSpec, TokenizedExample, collate, encode_prompt, normalise_answer
from zofed.device import model_device, to_device
from zofed.errors import ZofedError

METRICS = ("loss", "exact_match", "rouge_l", "gsm8k_answer")
GENERATION_METRICS = ("exact_match", "rouge_l", "gsm8k_answer")
ANSWER_METRICS = ("exact_match", "gsm8k_answer")  # scored against a gold short answer
# The task-specific metric each task reports by default (besides loss); others: exact_match where the task
# has short answers, Rouge-L otherwise.
TASK_METRICS = {"gsm8k": "gsm8k_answer"}


def default_metrics(task: TaskSpec) -> tuple[str, ...]:
    return ("loss", TASK_METRICS.get(task.name, "exact_match" if task.short_answers else "rouge_l"))


def resolve_metrics(task: TaskSpec, configured: Sequence[str] | None) -> tuple[str, ...]:
    """`configured` (eval.metrics), or the task's default set; an answer metric on a task without answers is refused."""
    metrics = tuple(configured) if configured else default_metrics(task)
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise ZofedError(f"unknown metric '{unknown[0]}'; use some of: {', '.join(METRICS)}")
    needs_answers = [name for name in metrics if name in ANSWER_METRICS]
    if needs_answers and not task.short_answers:
        raise ZofedError(f"metric {needs_answers[0]} needs gold short answers, which task {task.name} does not have; "
                         f"use rouge_l (e.g. eval.metrics=[loss,rouge_l])")
    return metrics


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
def generate_greedy(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[str]:
    """Greedy continuations of the token-id `prompts`, `batch_size` at a time, decoded without special tokens.

    Prompts are left-padded (with an attention mask), so a batch continues each prompt from its own
    last token and gives what the prompt alone would. `progress(done, total)` after each batch.
    """
    model.eval()
    pad = tokenizer.pad_token_id
    device = model_device(model)
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + list(ids) for ids in chunk], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            use_cache=True,  # the runtime turns it off for training forwards; generation wants it
        )
        texts += [tokenizer.decode(generated, skip_special_tokens=True).strip() for generated in output[:, width:]]
        progress(len(texts), len(prompts))
    return texts


def generate_answers(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[Example],
    max_length: int,
    max_new_tokens: int,
    batch_size: int,
    system_prompt: str | None = None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[str]:
    """The model's greedy answer to each example's prompt, formatted as training formats prompts."""
    prompts = [encode_prompt(tokenizer, example.prompt, max_length, system_prompt) for example in examples]
    return generate_greedy(model, tokenizer, prompts, max_new_tokens, batch_size, progress)


def score_generations(
    metrics: Sequence[str], examples: Sequence[Example], texts: Sequence[str], extract_answer: Callable[[str], str | None]
) -> dict[str, float]:
    """Each generation metric of `metrics` averaged over the examples (NaN where there is none to score)."""
    scorers: dict[str, Callable[[Example, str], float]] = {
        "exact_match": lambda example, text: float(_exact_match(extract_answer(text), example.answer)),
        "rouge_l": lambda example, text: rouge_l(text, example.response),
        "gsm8k_answer": lambda example, text: float(gsm8k_correct(text, example.answer)),
    }
    scores = {}
    for name in metrics:
        if name not in GENERATION_METRICS:
            continue
        pairs = [(example, text) for example, text in zip(examples, texts)
                 if name not in ANSWER_METRICS or example.answer is not None]
        scores[name] = sum(scorers[name](example, text) for example, text in pairs) / len(pairs) if pairs else math.nan
    return scores


def _exact_match(predicted: str | None, gold: str | None) -> bool:
    return predicted is not None and gold is not None and normalise_answer(predicted) == normalise_answer(gold)


_rouge_scorer = None


def rouge_l(prediction: str, reference: str) -> float:
    """Rouge-L F-measure of `prediction` against `reference` (rouge-score's `rougeL`, no stemming)."""
    global _rouge_scorer
    if not prediction.strip():
        return 0.0  # FedKSeed scores an empty generation 0
    if _rouge_scorer is None:  # imported on first use: nltk (rouge-score's dependency) takes a while to import
        from rouge_score.rouge_scorer import RougeScorer

        _rouge_scorer = RougeScorer(["rougeL"], use_stemmer=False)
    return float(_rouge_scorer.score(reference, prediction)["rougeL"].fmeasure)


# A number as GSM8K writes it: optional sign, digits with thousands commas, optional decimals.
_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
_AFTER_MARK = re.compile(r"####\s*\$?\s*([-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+))")


def normalise_number(text: str) -> str | None:
    """A number in one canonical form ("1,000.50" -> "1000.5", "+7" -> "7", "-0" -> "0"); None if not a number."""
    cleaned = text.strip().replace(",", "")
    if not _NUMBER.fullmatch(cleaned):
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def gsm8k_answer(text: str) -> str | None:
    """The number a generation gives as its answer: the first after a `####`, else the last one written."""
    marked = _AFTER_MARK.search(text)
    if marked is not None:
        return normalise_number(marked.group(1))
    numbers = _NUMBER.findall(text)
    return normalise_number(numbers[-1]) if numbers else None


def gsm8k_correct(text: str, gold: str | None) -> bool:
    """Whether the generation's answer equals `gold` (the text after the reference's `####`), both normalised."""
    predicted = gsm8k_answer(text)
    return predicted is not None and gold is not None and predicted == normalise_number(gold)


# eval.max_new_tokens when unset: a one-word answer needs few tokens; a response scored by Rouge-L
# gets FedKSeed's 128, and a GSM8K solution the same (its reasoning comes before the answer).
SHORT_ANSWER_TOKENS, LONG_ANSWER_TOKENS = 16, 128


def default_max_new_tokens(metrics: Sequence[str]) -> int:
    return LONG_ANSWER_TOKENS if {"rouge_l", "gsm8k_answer"} & set(metrics) else SHORT_ANSWER_TOKENS
