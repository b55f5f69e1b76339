"""The built-in task: short factual and arithmetic questions with one-word answers, made by the project.

Why this task: the quickstart must show zeroth-order fine-tuning of a real pretrained chat model
visibly lowering its test loss within minutes on a CPU. SmolLM2-Instruct knows most of these
answers but replies in a full sentence ("The capital of France is Paris."), so the loss of the
bare one-word answer starts high and falls as the model learns the terse format and the task's
conventions, a low-dimensional change that ZO's random directions find quickly. Answers are one
token-short word or number, so exact-match accuracy by greedy generation is meaningful, and
prompts are a handful of tokens, because every forward pass costs CPU time. Five categories give
the partitioners real labels to split by. Generation is seeded and needs no files or network.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from zofed.data.examples import Example

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


def _addition(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    return f"What is {a} plus {b}?", str(a + b)


def _capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(CAPITALS))
    return f"What is the capital of {country}?", CAPITALS[country]


def _antonym(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(sorted(ANTONYMS))
    return f"What is the opposite of {word}?", ANTONYMS[word]


def _next_day(rng: random.Random) -> tuple[str, str]:
    index = rng.randrange(len(DAYS))
    return f"Which day comes after {DAYS[index]}?", DAYS[(index + 1) % len(DAYS)]


def _next_month(rng: random.Random) -> tuple[str, str]:
    index = rng.randrange(len(MONTHS))
    return f"Which month comes after {MONTHS[index]}?", MONTHS[(index + 1) % len(MONTHS)]


CATEGORIES: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "addition": _addition,
    "capital": _capital,
    "antonym": _antonym,
    "next-day": _next_day,
    "next-month": _next_month,
}


def generate(size: int = DEFAULT_SIZE, seed: int = 0) -> list[Example]:
    """`size` examples, balanced over categories (round-robin), in a seeded order."""
    rng = random.Random(seed)
    names = list(CATEGORIES)
    examples = []
    for index in range(size):
        category = names[index % len(names)]
        prompt, answer = CATEGORIES[category](rng)
        examples.append(Example(prompt=prompt, response=answer, category=category, answer=answer))
    rng.shuffle(examples)
    return examples
