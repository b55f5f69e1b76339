"""An example is a prompt and a response; a task says how to read, label and score its examples."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from zofed.data.sources import DataSource


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str  # the full target the model is trained on
    category: str | None = None  # the label dirichlet/meta/pathological partitioners split by
    answer: str | None = None  # short gold answer for exact-match accuracy; None if the task has none
    history: tuple[tuple[str, str], ...] = ()  # (role, content) turns before the prompt, for chat rows


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    short_answers: bool  # exact-match accuracy is meaningful
    load: Callable[[DataSource | None, int | None, int], list[Example]]  # (source, limit, seed); None: no file
    extract_answer: Callable[[str], str | None]  # generated text -> answer to compare with Example.answer
    default_max_length: int


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalise_answer(text: str) -> str:
    """Lower-case, without surrounding punctuation and spaces; numbers in canonical form ("1,000" -> "1000")."""
    cleaned = text.strip().lower().strip(" \t\n.,!?;:'\"`*$")
    if _NUMBER.fullmatch(cleaned):
        value = float(cleaned.replace(",", ""))
        return str(int(value)) if value.is_integer() else repr(value)
    return " ".join(cleaned.split())


_SENTENCE_END = re.compile(r"[.!?\n]")


def final_word(text: str) -> str | None:
    """The last word of the first sentence: "Paris" from both "Paris" and "The capital is Paris.".

    Scoring the last word rather than the first keeps accuracy about knowing the answer, not
    about having learnt the terse format, which the loss already measures.
    """
    sentence = _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    words = sentence.replace(",", " ").split()
    return words[-1] if words else None


def last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None
