"""Data through `datasets`: file formats, directories mapped to splits, hub ids, column mapping, chat rows, test sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zofed.config import parse_config
from zofed.data import load_examples, tokenize_example
from zofed.data.sources import DataSource, read_rows
from zofed.errors import ZofedError
from zofed.llm import load_tokenizer
from zofed.runtime.experiment import json_digest, prepare_data

from ..shared_data import shared_data

REPO = Path(__file__).resolve().parents[2]


def gsm8k_rows(prefix: str, count: int) -> list[dict]:
    return [{"question": f"{prefix} question {i}?", "answer": f"step\n#### {i}"} for i in range(count)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_directory_trains_on_train_file_and_tests_on_test_file(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", gsm8k_rows("test", 10))
    write_jsonl(tmp_path / "train.jsonl", gsm8k_rows("train", 40))
    examples = load_examples("gsm8k", str(tmp_path))
    assert len(examples) == 40 and all(e.prompt.startswith("train") for e in examples)
    config = parse_config({"task": "gsm8k", "model": "tiny-llama", "clients": 2,
                           "data": {"path": str(tmp_path), "test_split": "test", "val_size": 5}})
    splits = prepare_data(config).splits
    assert [e.prompt for e in splits.test] == [f"test question {i}?" for i in range(10)]  # the whole split, in file order
    assert len(splits.val) == 5 and len(splits.train) == 35
    assert {e.prompt for e in splits.train + splits.val} == {f"train question {i}?" for i in range(40)}


def test_a_split_the_directory_lacks_is_refused_with_the_splits_it_has(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", gsm8k_rows("train", 4))
    write_jsonl(tmp_path / "test.jsonl", gsm8k_rows("test", 4))
    with pytest.raises(ZofedError, match=r"validation.*train.*test.*data.split") as error:
        load_examples("gsm8k", str(tmp_path), split="validation")
    assert "\n" not in str(error.value)


def test_a_directory_without_data_files_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not rows")
    with pytest.raises(ZofedError, match="has no .json, .jsonl, .csv or .parquet file"):
        load_examples("gsm8k", str(tmp_path))


def test_separate_test_file(tmp_path):
    train = write_jsonl(tmp_path / "mine.jsonl", gsm8k_rows("train", 30))
    test = write_jsonl(tmp_path / "official.jsonl", gsm8k_rows("test", 7))
    config = parse_config({"task": "gsm8k", "clients": 2,
                           "data": {"path": str(train), "test_path": str(test), "val_size": 4, "test_size": 20}})
    splits = prepare_data(config).splits
    assert len(splits.test) == 7 and len(splits.train) == 26  # test_size applies only to a held-out test set


def test_csv_cells_are_text_and_an_empty_cell_is_missing(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text('question,answer\n"How many, exactly?",007 #### 007\nNA,#### NA\n')
    examples = load_examples("gsm8k", str(path))
    assert examples[0].prompt == "How many, exactly?" and examples[0].response == "007 #### 007"
    assert examples[1].prompt == "NA"
    path.write_text("question,answer\nq,#### 1\nq2,\n")
    with pytest.raises(ZofedError, match="row 2: missing field 'answer'"):
        load_examples("gsm8k", str(path))


def test_parquet_file(tmp_path):
    import datasets

    datasets.Dataset.from_list(gsm8k_rows("p", 5)).to_parquet(str(tmp_path / "data.parquet"))
    assert [e.answer for e in load_examples("gsm8k", str(tmp_path / "data.parquet"))] == ["0", "1", "2", "3", "4"]


def test_column_mapping(tmp_path):
    rows = [{"problem": "What is 2+2?", "solution": "2+2=4\n#### 4", "id": 1}]
    path = write_jsonl(tmp_path / "mapped.jsonl", rows)
    [example] = load_examples("gsm8k", str(path), columns={"question": "problem", "answer": "solution"})
    assert example.prompt == "What is 2+2?" and example.answer == "4"
    with pytest.raises(ZofedError, match="row 1: missing field 'question' \\(column 'query'\\)"):
        load_examples("gsm8k", str(path), columns={"question": "query", "answer": "solution"})
    with pytest.raises(ZofedError, match="maps problem, which this task does not read; map its fields question, answer"):
        load_examples("gsm8k", str(path), columns={"problem": "question"})


def test_chat_rows_train_on_the_last_assistant_turn(tmp_path):
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": conversation, "category": "geo"}, {"messages": conversation[1:3]}])
    first, second = load_examples("chat", str(path))
    assert (first.prompt, first.response, first.category) == ("And of Italy?", "Rome.", "geo")
    assert first.history == (("system", "You are terse."), ("user", "Capital of France?"), ("assistant", "Paris."))
    assert second.history == () and second.category == "other"
    tokenizer = load_tokenizer("tiny-llama")
    tokens = tokenize_example(tokenizer, first, 512, system_prompt="ignored: the row has its own")
    text = tokenizer.decode(tokens.input_ids)
    assert "You are terse." in text and "Paris." in text and "ignored" not in text
    learnt = tokenizer.decode([t for t in tokens.labels if t != -100])
    assert "Rome." in learnt and "Paris." not in learnt


@pytest.mark.parametrize("messages, fragment", [
    ([{"role": "user", "content": "hi"}], "messages must end with a user turn answered by an assistant turn"),
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}], "message 2 must be {role, content}"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}], "message 2 must be {role, content}"),
    ("hi", "field 'messages' must be a list"),
])
def test_malformed_chat_row_names_row_and_message(tmp_path, messages, fragment):
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [good, {"messages": messages}])
    with pytest.raises(ZofedError, match="row 2: " + fragment.replace("{", r"\{").replace("}", r"\}")) as error:
        load_examples("chat", str(path))
    assert "\n" not in str(error.value)


def test_hub_dataset_offline_says_how_to_allow_downloads():
    with pytest.raises(ZofedError, match="HF_HUB_OFFLINE=0") as error:
        load_examples("gsm8k", "openai/gsm8k", name="main")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("data, fragment", [
    ({"test_split": "test"}, "data.test_split needs data.path"),
    ({"path": "x.jsonl", "test_split": "train"}, "is the training split"),
    ({"columns": {"question": "q"}}, "data.columns needs data.path"),
])
def test_config_refuses_inconsistent_sources(data, fragment):
    with pytest.raises(ZofedError, match=fragment):
        parse_config({"task": "gsm8k", "data": data})


def test_local_source_refuses_a_hub_config_name_and_a_split_of_a_single_file(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", gsm8k_rows("q", 2))
    with pytest.raises(ZofedError, match="remove data.name"):
        load_examples("gsm8k", str(path), name="main")
    with pytest.raises(ZofedError, match="has one split, train"):
        load_examples("gsm8k", str(path), split="test")
    (tmp_path / "d.txt").write_text("q")
    with pytest.raises(ZofedError, match="not .json, .jsonl, .csv or .parquet"):
        load_examples("gsm8k", str(tmp_path / "d.txt"))


def test_required_field_types_are_checked(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "#### 1"}, {"question": ["q"], "answer": "#### 2"}])
    with pytest.raises(ZofedError, match="row 2: field 'question' must be text, got list"):
        read_rows(DataSource(str(path)), {"question": str, "answer": str})


def test_shared_directories_read_like_their_files():
    by_dir = load_examples("gsm8k", str(shared_data("gsm8k")), limit=100, seed=3)
    assert by_dir == load_examples("gsm8k", str(shared_data("gsm8k", "train.jsonl")), limit=100, seed=3)
    alpaca = load_examples("alpaca", str(shared_data("alpaca")))
    assert len(alpaca) == 5000 and alpaca == load_examples("alpaca", str(shared_data("alpaca", "alpaca_5000.json")))


# Digests of the splits and partitions the shipped configs produced with zofed's hand-written JSON
# reader before loading moved to `datasets`: the same examples, in the same order, for every split.
BEFORE_DATASETS = {
    "gsm8k": {"train": "cb346ea29529db464a7650fad60c1d26ef560901189876eb30cd6b151b09c6c5", "val": "0512f4d404332f257c148ba2aa6b437d3f3ab3395e3fc82ab8ac84afe3dfcc2a", "test": "93ecf5c37a86a1ec6ecc602d189a7c7ddb3c50f6921b3f9bac7a9c65f3023272", "partition": "c6ecb0c775bdbba9b3d231c2b72615b959080ba6e4128718cdd8b81dc43e3dcf"},
    "alpaca": {"train": "626274312a773251b267dcc56497396c70698099673db71078d1318683375b04", "val": "dc482f8da136ce28d2f54b4fc5473b2ced254a90da82071d2ef61f16e0ebf26b", "test": "20365392c5d893f491703e3f43819777f4d604ff8322e9a853ac0c772c6740d3", "partition": "ea7aa8ccdd4597f747170de1d1bc097d0f8c7ba0683946c13282afb8030b2f95"},
    "codealpaca": {"train": "35178ad63a34f8811114086d24981db5996cb68d67b3b7d43b2fe7a21cccbc74", "val": "2bb73928bcd0836939e844c18ce3b97af5989d00e4f5b1e8ae68a52787abcc62", "test": "802ec0cce057f8406816291749e104b809c0893d1054d6d8b27ecce06ce68223", "partition": "403b7097ab21a18ea2e98c44a44b3bea43df625b45bc528979cf2e1b02b5a142"},
    "quickstart": {"train": "b52523791636b7bab92717da24ebae6343b9449b8c8ec03caa21cb71916909a4", "val": "d1dabd30c1e0b48ea4464fed5e2002c2758ab08d8fc146de0c0eab1368dc265e", "test": "1138fa1f6bb372c59d73f764f1e170840d56cd5c45f00eb5e5f6b820e7a28ebd", "partition": "468130c4447d1c6ac4e46bd0d29d7d9f9f9d0db59e5afb143f7784f2d62c0f91"},
}


@pytest.mark.parametrize("name", sorted(BEFORE_DATASETS))
def test_shipped_configs_read_the_same_examples_as_before(name):
    from zofed.config import load_config

    config = load_config(REPO / "configs" / f"{name}.yaml")
    if config.data.path is not None:  # .../shared/data/<set>/<file>: the shared data wherever it is
        parts = Path(config.data.path).parts
        in_shared = parts[len(parts) - 1 - parts[::-1].index("shared") + 2:]
        config = load_config(REPO / "configs" / f"{name}.yaml", [f"data.path={shared_data(*in_shared)}"])
    data = prepare_data(config)
    digests = {split: json_digest([[e.prompt, e.response, e.category, e.answer] for e in getattr(data.splits, split)])
               for split in ("train", "val", "test")}
    assert digests | {"partition": json_digest(data.client_indices)} == BEFORE_DATASETS[name]
