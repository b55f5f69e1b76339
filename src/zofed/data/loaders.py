"""Task registry and loaders: the built-in task, GSM8K, Alpaca, CodeAlpaca and Dolly.

Files are local .json (a list of objects) or .jsonl, or a directory holding one; anything else
is taken as a hub dataset name for `datasets.load_dataset` (offline, so it must be cached).
A malformed row stops the load with its file, row number and field named.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from zofed.data import builtin
from zofed.data.examples import Example, TaskSpec, final_word, last_number
from zofed.errors import ZofedError

Row = dict


def read_rows(source: str, required: tuple[str, ...]) -> list[tuple[str, int, Row]]:
    """(where, row number, row) for every row, each checked to have string `required` fields."""
    path = Path(source)
    if path.is_dir():
        files = sorted([*path.glob("*.jsonl"), *path.glob("*.json")])
        if not files:
            raise ZofedError(f"data directory '{source}' has no .json or .jsonl file; point data.path at a file")
        path = files[0]
    if path.is_file():
        rows = list(enumerate(_read_file(path), start=1))
        where = str(path)
    elif _looks_like_path(source):
        raise ZofedError(f"data file '{source}' not found; check data.path")
    else:
        rows = list(enumerate(_read_hub(source), start=1))
        where = source
    checked = []
    for number, row in rows:
        if not isinstance(row, dict):
            raise ZofedError(f"data file {where} row {number}: expected a JSON object, got {type(row).__name__}")
        for field in required:
            if field not in row:
                raise ZofedError(
                    f"data file {where} row {number}: missing field '{field}'; every row needs {', '.join(required)}"
                )
            if not isinstance(row[field], str):
                raise ZofedError(
                    f"data file {where} row {number}: field '{field}' must be text, got {type(row[field]).__name__}"
                )
        checked.append((where, number, row))
    if not checked:
        raise ZofedError(f"data source '{where}' has no rows; give a file with at least one example")
    return checked


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.endswith((".json", ".jsonl")) or source.count("/") > 1


def _read_file(path: Path) -> list:
    text = path.read_text(encoding="utf-8", errors="strict")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ZofedError(f"data file {path} line {number}: invalid JSON ({error.msg}); fix or remove the line") from None
        return rows
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ZofedError(f"data file {path}: invalid JSON at line {error.lineno} ({error.msg}); fix the file") from None
    if not isinstance(document, list):
        raise ZofedError(f"data file {path}: expected a JSON list of objects; use a list or a .jsonl file")
    return document


def _read_hub(name: str) -> Iterable[Row]:
    try:
        import datasets

        return datasets.load_dataset(name, split="train")
    except Exception as error:  # datasets raises many types for "not available offline"
        raise ZofedError(
            f"data '{name}' is neither a local file nor a cached hub dataset ({type(error).__name__}); "
            "give a local .json/.jsonl path in data.path"
        ) from None


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


def load_gsm8k(path: str | None, limit: int | None, seed: int) -> list[Example]:
    examples = []
    for where, number, row in read_rows(_require_path(path, "gsm8k"), ("question", "answer")):
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


def load_instruction_file(path: str | None, limit: int | None, seed: int, task: str) -> list[Example]:
    rows = read_rows(_require_path(path, task), ("instruction", "output"))
    verbs = [_leading_word(row["instruction"]) for _, _, row in rows]
    common = {verb for verb, _ in Counter(verbs).most_common(COMMON_VERBS)}
    examples = []
    for (where, number, row), verb in zip(rows, verbs):
        extra = row.get("input", "")
        if not isinstance(extra, str):
            raise ZofedError(f"data file {where} row {number}: field 'input' must be text")
        prompt = row["instruction"].strip() + (f"\n\n{extra.strip()}" if extra.strip() else "")
        examples.append(Example(prompt, row["output"].strip(), verb if verb in common else "other"))
    return _limited(examples, limit, seed)


def _leading_word(text: str) -> str:
    words = re.findall(r"[a-zA-Z]+", text)
    return words[0].lower() if words else "other"


# Dolly -------------------------------------------------------------------------------------------


def load_dolly(path: str | None, limit: int | None, seed: int) -> list[Example]:
    examples = []
    for where, number, row in read_rows(_require_path(path, "dolly"), ("instruction", "context", "response", "category")):
        context = row["context"].strip()
        prompt = row["instruction"].strip() + (f"\n\n{context}" if context else "")
        examples.append(Example(prompt, row["response"].strip(), row["category"].strip() or "other"))
    return _limited(examples, limit, seed)


# Built-in ------------------------------------------------------------------------------------------


def load_builtin(path: str | None, limit: int | None, seed: int) -> list[Example]:
    if path is not None:
        raise ZofedError("the built-in task is generated, it reads no file; remove data.path or pick task=gsm8k/alpaca/...")
    return builtin.generate(limit or builtin.DEFAULT_SIZE, seed)


def _require_path(path: str | None, task: str) -> str:
    if not path:
        raise ZofedError(f"task {task} needs data.path (a .json/.jsonl file, a directory or a cached hub name)")
    return path


def _no_answer(_: str) -> str | None:
    return None


TASKS: dict[str, TaskSpec] = {}


def _register(spec: TaskSpec) -> None:
    if spec.name in TASKS:
        raise ValueError(f"task '{spec.name}' is already registered")
    TASKS[spec.name] = spec


def _instruction_loader(task: str) -> Callable[[str | None, int | None, int], list[Example]]:
    return lambda path, limit, seed: load_instruction_file(path, limit, seed, task)


_register(TaskSpec("builtin", "built-in one-word QA in 8 categories, no repeated question (generated, no files)", True, load_builtin, final_word, 64))
_register(TaskSpec("gsm8k", "GSM8K math word problems {question, answer}; accuracy on the final number", True, load_gsm8k, extract_gsm8k, 256))
_register(TaskSpec("alpaca", "Alpaca instructions {instruction, input, output}", False, _instruction_loader("alpaca"), _no_answer, 256))
_register(TaskSpec("codealpaca", "CodeAlpaca {instruction, input, output}", False, _instruction_loader("codealpaca"), _no_answer, 256))
_register(TaskSpec("dolly", "Dolly {instruction, context, response, category}", False, load_dolly, _no_answer, 256))


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ZofedError(f"unknown task '{name}'; use one of: {', '.join(TASKS)}") from None


def load_examples(task: str, path: str | None = None, limit: int | None = None, seed: int = 0) -> list[Example]:
    return get_task(task).load(path, limit, seed)
