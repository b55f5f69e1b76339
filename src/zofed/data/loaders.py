"""Task registry and loaders: the built-in task, GSM8K, Alpaca, CodeAlpaca, Dolly and chat.

Each file-based task reads its rows from a `DataSource` (see sources.py: files, directories and
hub datasets through `datasets.load_dataset`) under its own field names, mapped to the source's
columns by `data.columns`. A malformed row stops the load with its source, row number and field.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace

from zofed.data import builtin
from zofed.data.examples import Example, TaskSpec, final_word, last_number
from zofed.data.sources import DataSource, load_tables, read_rows
from zofed.errors import ZofedError

def _limited(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    if limit is None or limit >= len(examples):
        return examples
    chosen = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in chosen]


# GSM8K -------------------------------------------------------------------------------------------

_CALCULATOR = re.compile(r"<<[^>]*>>")


def gsm8k_steps_label(answer_text: str) -> str:
    """Our category for GSM8K: the number of non-empty reasoning lines before '####', bucketed.

    Buckets `steps-2` (one or two lines), `steps-3`, `steps-4`, `steps-5+`: on the 7,473 training
    problems they hold 1961/2149/1659/1704, so Dirichlet and pathological splits have four
    labels of similar size. Harder problems take more steps, so a skewed split gives clients
    different difficulty and answer length, the heterogeneity GAM-LPP targets.
    """
    steps = max(1, len([line for line in answer_text.split("####")[0].splitlines() if line.strip()]))
    return f"steps-{min(max(steps, 2), 5)}{'+' if steps >= 5 else ''}"


def load_gsm8k(source: DataSource | None, limit: int | None, seed: int) -> list[Example]:
    examples = []
    for where, number, row in read_rows(_require_source(source, "gsm8k"), {"question": str, "answer": str}):
        if "####" not in row["answer"]:
            raise ZofedError(f"data file {where} row {number}: answer has no '#### <final answer>'; GSM8K rows need one")
        answer_text = _CALCULATOR.sub("", row["answer"])
        final = answer_text.split("####")[-1].strip()
        examples.append(Example(row["question"].strip(), answer_text.strip(), gsm8k_steps_label(answer_text), final))
    return _limited(examples, limit, seed)


def extract_gsm8k(text: str) -> str | None:
    if "####" in text:
        found = last_number(text.split("####", 1)[1].split("\n")[0]) or last_number(text.split("####", 1)[1])
        if found is not None:
            return found
    return last_number(text)


# Alpaca, CodeAlpaca -----------------------------------------------------------------------------

COMMON_VERBS = 12  # the most frequent leading verbs become categories; the rest are "other"


def load_instruction_file(source: DataSource | None, limit: int | None, seed: int, task: str) -> list[Example]:
    rows = read_rows(_require_source(source, task), {"instruction": str, "output": str}, {"input": str})
    verbs = [_leading_word(row["instruction"]) for _, _, row in rows]
    common = {verb for verb, _ in Counter(verbs).most_common(COMMON_VERBS)}
    examples = []
    for (_, _, row), verb in zip(rows, verbs):
        extra = row.get("input", "")
        prompt = row["instruction"].strip() + (f"\n\n{extra.strip()}" if extra.strip() else "")
        examples.append(Example(prompt, row["output"].strip(), verb if verb in common else "other"))
    return _limited(examples, limit, seed)


def _leading_word(text: str) -> str:
    words = re.findall(r"[a-zA-Z]+", text)
    return words[0].lower() if words else "other"


# Dolly -------------------------------------------------------------------------------------------


def load_dolly(source: DataSource | None, limit: int | None, seed: int) -> list[Example]:
    examples = []
    fields = {"instruction": str, "context": str, "response": str, "category": str}
    for _, _, row in read_rows(_require_source(source, "dolly"), fields):
        context = row["context"].strip()
        prompt = row["instruction"].strip() + (f"\n\n{context}" if context else "")
        examples.append(Example(prompt, row["response"].strip(), row["category"].strip() or "other"))
    return _limited(examples, limit, seed)


# Chat ------------------------------------------------------------------------------------------------

ROLES = ("system", "user", "assistant")


def load_chat(source: DataSource | None, limit: int | None, seed: int) -> list[Example]:
    """Conversations; the last assistant turn is the response, the turns before it its history. Every
    assistant turn is trained (tokenize.py); the last one is what evaluation generates."""
    examples = []
    for where, number, row in read_rows(_require_source(source, "chat"), {"messages": list}, {"category": str}):
        turns = [_turn(where, number, index, turn) for index, turn in enumerate(row["messages"], start=1)]
        if len(turns) < 2 or turns[-1][0] != "assistant" or turns[-2][0] != "user":
            raise ZofedError(
                f"{where} row {number}: messages must end with a user turn answered by an assistant turn; fix the row"
            )
        examples.append(Example(turns[-2][1], turns[-1][1], row.get("category", "other"), history=tuple(turns[:-2])))
    return _limited(examples, limit, seed)


def _turn(where: str, number: int, index: int, turn) -> tuple[str, str]:
    if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
        raise ZofedError(
            f"{where} row {number}: message {index} must be {{role, content}} with role one of {', '.join(ROLES)} "
            "and text content; fix the row"
        )
    return turn["role"], turn["content"]


# Built-in ------------------------------------------------------------------------------------------


def load_builtin(source: DataSource | None, limit: int | None, seed: int) -> list[Example]:
    if source is not None:
        raise ZofedError("the built-in task is generated, it reads no file; remove data.path or pick task=gsm8k/alpaca/...")
    return builtin.generate(limit or builtin.DEFAULT_SIZE, seed)


def _require_source(source: DataSource | None, task: str) -> DataSource:
    if source is None:
        raise ZofedError(f"task {task} needs data.path (a .json/.jsonl/.csv/.parquet file, a directory or a hub dataset id)")
    return source


def _no_answer(_: str) -> str | None:
    return None


TASKS: dict[str, TaskSpec] = {}


def _register(spec: TaskSpec) -> None:
    if spec.name in TASKS:
        raise ValueError(f"task '{spec.name}' is already registered")
    TASKS[spec.name] = spec


def _instruction_loader(task: str) -> Callable[[DataSource | None, int | None, int], list[Example]]:
    return lambda source, limit, seed: load_instruction_file(source, limit, seed, task)


_register(TaskSpec("builtin", "built-in one-word QA in 8 categories, no repeated question (generated, no files)", True, load_builtin, final_word, 64))
_register(TaskSpec("gsm8k", "GSM8K math word problems {question, answer}; accuracy on the final number", True, load_gsm8k, extract_gsm8k, 256))
_register(TaskSpec("alpaca", "Alpaca instructions {instruction, input, output}", False, _instruction_loader("alpaca"), _no_answer, 256))
_register(TaskSpec("codealpaca", "CodeAlpaca {instruction, input, output}", False, _instruction_loader("codealpaca"), _no_answer, 256))
_register(TaskSpec("dolly", "Dolly {instruction, context, response, category}", False, load_dolly, _no_answer, 256))
_register(TaskSpec("chat", "conversations {messages: [{role, content}, ...]}; trains every assistant turn", False, load_chat, _no_answer, 512))


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ZofedError(f"unknown task '{name}'; use one of: {', '.join(TASKS)}") from None


def load_examples(
    task: str,
    path: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    *,
    name: str | None = None,
    split: str = "train",
    columns: Mapping[str, str] | None = None,
) -> list[Example]:
    """The task's examples from `path` (None for the built-in task), `limit` of them drawn by `seed`."""
    source = None if path is None else DataSource(path, name, split, dict(columns or {}))
    return get_task(task).load(source, limit, seed)


def load_splits(
    task: str,
    path: str | None = None,
    size: int | None = None,
    seed: int = 0,
    *,
    name: str | None = None,
    columns: Mapping[str, str] | None = None,
) -> dict[str, list[Example]]:
    """Every split of the task's source by the name `datasets` gives it (train, validation, test...),
    its files read once. `size`: how many questions the built-in task generates (its one split, train)."""
    spec = get_task(task)
    if path is None:
        return {"train": spec.load(None, size, seed)}
    source = DataSource(path, name, "train", dict(columns or {}))
    tables = load_tables(source)
    return {split: spec.load(replace(source, split=split, tables=tables), None, seed) for split in tables}
