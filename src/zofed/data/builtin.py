"""The built-in task: short factual and arithmetic questions with one-word answers, made by the project.

Why this task: the quickstart must show zeroth-order fine-tuning of a real pretrained chat model
visibly lowering its test loss within minutes on a CPU. SmolLM2-Instruct knows most of these
answers but replies in a full sentence ("The capital of France is Paris."), so the loss of the
bare one-word answer starts high and falls as the model learns the terse format and the task's
conventions, a low-dimensional change that ZO's random directions find quickly. Answers are one
token-short word or number, so exact-match accuracy by greedy generation is meaningful, and
prompts are a handful of tokens, because every forward pass costs CPU time. Eight categories
(arithmetic with large pools, facts with small ones) give the partitioners real labels to split
by. No question repeats, so validation and test questions are never seen in training.
Generation is seeded and needs no files or network.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from zofed.data.examples import Example
from zofed.errors import ZofedError

DEFAULT_SIZE = 2000

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Egypt": "Cairo", "Canada": "Ottawa", "Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo",
    "Greece": "Athens", "Cuba": "Havana", "Russia": "Moscow", "China": "Beijing", "Poland": "Warsaw",
    "Austria": "Vienna", "Portugal": "Lisbon", "Ireland": "Dublin", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Hungary": "Budapest", "Thailand": "Bangkok",
    "Chile": "Santiago", "Argentina": "Buenos Aires", "Mexico": "Mexico City", "India": "New Delhi",
    "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad", "Belgium": "Brussels",
    "Netherlands": "Amsterdam", "Switzerland": "Bern", "Australia": "Canberra", "Vietnam": "Hanoi",
    "Indonesia": "Jakarta", "Colombia": "Bogota", "Venezuela": "Caracas", "Morocco": "Rabat",
    "Nigeria": "Abuja", "Ghana": "Accra", "Ethiopia": "Addis Ababa", "Ukraine": "Kyiv",
    "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb",
    "Czechia": "Prague", "Slovakia": "Bratislava", "Iceland": "Reykjavik", "Philippines": "Manila",
    "Malaysia": "Kuala Lumpur", "Pakistan": "Islamabad", "Bangladesh": "Dhaka", "Nepal": "Kathmandu",
    "Qatar": "Doha", "Lebanon": "Beirut", "Syria": "Damascus", "Jordan": "Amman", "Israel": "Jerusalem",
}
# Single-word capitals only, so every answer is one word.
CAPITALS = {country: city for country, city in CAPITALS.items() if " " not in city}

ANTONYMS = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "happy": "sad", "light": "dark",
    "old": "new", "open": "closed", "early": "late", "hard": "soft", "wet": "dry", "full": "empty",
    "strong": "weak", "rich": "poor", "high": "low", "long": "short", "thick": "thin", "loud": "quiet",
    "clean": "dirty", "heavy": "light", "true": "false", "win": "lose", "push": "pull", "inside": "outside",
    "above": "below", "before": "after", "left": "right", "day": "night", "black": "white", "good": "bad",
    "young": "old", "cheap": "expensive", "safe": "dangerous", "wide": "narrow", "sharp": "dull",
    "sweet": "sour", "first": "last", "near": "far", "buy": "sell", "start": "finish",
}

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]


def _addition() -> list[tuple[str, str]]:
    return [(f"What is {a} plus {b}?", str(a + b)) for a in range(2, 100) for b in range(2, 100)]


def _subtraction() -> list[tuple[str, str]]:
    return [(f"What is {a} minus {b}?", str(a - b)) for a in range(10, 100) for b in range(1, a)]


def _larger() -> list[tuple[str, str]]:
    return [(f"Which is larger, {a} or {b}?", str(max(a, b))) for a in range(10, 100) for b in range(10, 100) if a != b]


def _next_number() -> list[tuple[str, str]]:
    return [(f"What number comes after {n}?", str(n + 1)) for n in range(1, 999)]


def _capital() -> list[tuple[str, str]]:
    return [(f"What is the capital of {country}?", city) for country, city in sorted(CAPITALS.items())]


def _antonym() -> list[tuple[str, str]]:
    return [(f"What is the opposite of {word}?", opposite) for word, opposite in sorted(ANTONYMS.items())]


def _next_day() -> list[tuple[str, str]]:
    return [(f"Which day comes after {day}?", DAYS[(i + 1) % len(DAYS)]) for i, day in enumerate(DAYS)]


def _next_month() -> list[tuple[str, str]]:
    return [(f"Which month comes after {month}?", MONTHS[(i + 1) % len(MONTHS)]) for i, month in enumerate(MONTHS)]


# Each category lists every question it can ask; generation draws without replacement, so no
# question repeats and a held-out split never contains a question seen in training.
CATEGORIES: dict[str, Callable[[], list[tuple[str, str]]]] = {
    "addition": _addition,
    "subtraction": _subtraction,
    "larger": _larger,
    "next-number": _next_number,
    "capital": _capital,
    "antonym": _antonym,
    "next-day": _next_day,
    "next-month": _next_month,
}


def pool_size() -> int:
    return sum(len(questions()) for questions in CATEGORIES.values())


def generate(size: int = DEFAULT_SIZE, seed: int = 0) -> list[Example]:
    """`size` distinct questions, as balanced over categories as their pools allow, in a seeded order.

    Categories take turns; a category whose pool runs out (there are only 7 days) drops out of
    the rotation and the others fill the remaining places.
    """
    if size > pool_size():
        raise ZofedError(f"the built-in task has {pool_size()} distinct questions, fewer than the {size:,} asked for "
                         "(data.limit training questions plus the held-out ones); lower data.limit/data.val_size/data.test_size")
    rng = random.Random(seed)
    pools = {}
    for name, questions in CATEGORIES.items():
        pool = questions()
        rng.shuffle(pool)
        pools[name] = pool
    examples: list[Example] = []
    while len(examples) < size:
        for name, pool in pools.items():
            if pool and len(examples) < size:
                prompt, answer = pool.pop()
                examples.append(Example(prompt=prompt, response=answer, category=name, answer=answer))
    rng.shuffle(examples)
    return examples
