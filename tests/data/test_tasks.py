import json

import pytest

from zofed.data import TASKS, get_task, load_examples, normalise_answer
from zofed.data.builtin import CATEGORIES, generate
from zofed.data.loaders import extract_gsm8k
from zofed.errors import ZofedError

from ..shared_data import shared_data


def test_builtin_is_deterministic_balanced_and_seeded():
    first, again, other = generate(500, seed=1), generate(500, seed=1), generate(500, seed=2)
    assert first == again and first != other
    counts = {c: sum(e.category == c for e in first) for c in CATEGORIES}
    assert len(counts) >= 4 and min(counts.values()) >= 7  # every category present, the 7 days included
    large = [n for c, n in counts.items() if c in ("addition", "subtraction", "larger", "next-number")]
    assert max(large) - min(large) <= 1  # categories with large pools share the places equally
    assert all(e.answer == e.response and len(e.response.split()) == 1 for e in first)
    assert len({e.answer for e in first}) > 50


def test_builtin_never_repeats_a_question():
    examples = generate(3000, seed=0)
    assert len({e.prompt for e in examples}) == 3000
    with pytest.raises(ZofedError, match="distinct questions"):
        generate(10**6)


def test_builtin_refuses_a_path():
    with pytest.raises(ZofedError, match="built-in"):
        load_examples("builtin", "x.json")


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ZofedError, match="gsm8k"):
        get_task("gsm9k")


def test_gsm8k_real_file_and_answer_extraction():
    examples = load_examples("gsm8k", str(shared_data("gsm8k", "train.jsonl")), limit=50, seed=0)
    assert len(examples) == 50
    assert all("<<" not in e.response and e.answer and e.category.startswith("steps-") for e in examples)
    assert extract_gsm8k("so 3+4 = 7\n#### 1,234") == "1,234"
    assert extract_gsm8k("she has 5 then 12 apples") == "12"
    assert normalise_answer(extract_gsm8k("#### 72.0")) == "72"


def test_normalise_answer():
    assert normalise_answer(" Paris. ") == "paris"
    assert normalise_answer("1,000") == "1000"
    assert normalise_answer("7.0") == "7"
    assert normalise_answer("**42**") == "42"


def write(path, rows):
    path.write_text(json.dumps(rows))
    return str(path)


def test_alpaca_and_dolly_from_files(tmp_path):
    alpaca = write(tmp_path / "a.json", [
        {"instruction": "Write a poem", "input": "", "output": "Roses"},
        {"instruction": "Translate this", "input": "hola", "output": "hello"},
    ])
    examples = load_examples("alpaca", alpaca)
    assert examples[1].prompt == "Translate this\n\nhola" and examples[0].category == "write"
    dolly = tmp_path / "d.jsonl"
    dolly.write_text(json.dumps({"instruction": "Q", "context": "C", "response": "R", "category": "qa"}) + "\n")
    [example] = load_examples("dolly", str(dolly))
    assert example.prompt == "Q\n\nC" and example.category == "qa" and example.answer is None


@pytest.mark.parametrize(
    "content, suffix, fragment",
    [
        ('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', ".json", "row 2: missing field 'output'"),
        ('[{"instruction": "a", "output": 3}]', ".json", "row 1: field 'output' must be text"),
        ('[{"instruction": "a", "output": "b"}', ".json", "invalid JSON"),
        ('{"instruction": "a", "output": "b"}\n{"instr', ".jsonl", "line 2: invalid JSON"),
        ('["just a string"]', ".json", "row 1: expected a JSON object"),
        ("[]", ".json", "no rows"),
    ],
)
def test_malformed_data_is_one_clear_error(tmp_path, content, suffix, fragment):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(ZofedError, match=fragment.replace("(", r"\(")) as error:
        load_examples("alpaca", str(path))
    assert "\n" not in str(error.value)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ZofedError, match="not found"):
        load_examples("gsm8k", str(tmp_path / "none.jsonl"))


def test_every_task_is_described():
    assert {"builtin", "gsm8k", "alpaca", "codealpaca", "dolly"} <= set(TASKS)


def test_gsm8k_label_counts_reasoning_lines():
    from zofed.data.loaders import gsm8k_steps_label

    assert gsm8k_steps_label("He pays 3.\n#### 3") == "steps-2"  # one line joins the two-line bucket
    assert gsm8k_steps_label("a\nb\n\nc\n#### 1") == "steps-3"  # blank lines do not count
    assert gsm8k_steps_label("a\nb\nc\nd\n#### 1") == "steps-4"
    assert gsm8k_steps_label("\n".join("abcdefg") + "\n#### 1") == "steps-5+"
