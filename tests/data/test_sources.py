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


def test_json_files_are_parsed_once_and_never_handed_to_load_dataset(tmp_path, monkeypatch):
    import datasets

    from zofed.data.sources import load_tables

    write_jsonl(tmp_path / "test.jsonl", gsm8k_rows("test", 3))
    write_jsonl(tmp_path / "train.jsonl", gsm8k_rows("train", 5) + [{"question": "extra field", "answer": "#### 1", "id": 7}])
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: pytest.fail("a JSON file was read again"))
    reads, read_text = [], Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *args, **kwargs: reads.append(self.name) or read_text(self, *args, **kwargs))
    tables = load_tables(DataSource(path=str(tmp_path)))
    assert sorted(reads) == ["test.jsonl", "train.jsonl"]  # each file once
    assert {split: table.num_rows for split, table in tables.items()} == {"train": 6, "test": 3}
    assert tables["train"]["id"] == [None] * 5 + [7]  # a field some rows lack is missing in the others, as pyarrow's reader has it


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


def test_chat_rows_train_every_assistant_turn(tmp_path):
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
    assert "Rome." in learnt and "Paris." in learnt and "Capital" not in learnt and "terse" not in learnt


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


# Digests of the splits and partitions the shipped configs produce. Re-pinned once when splits moved to
# `Dataset.train_test_split` (a source's own test/validation splits first, data.limit after them) and
# partitions to Flower Datasets' partitioners: the same source rows, drawn by other seeded streams.
PINNED = {
    "alpaca": {"train": "09373dadf588e8d4ce358e037d37744414efbfd8897a0270edfa65a0b71a2956", "val": "e0a77345893556853cee8b3d2c98fad6028c53cbcf637b016349c7934e2f5cbc", "test": "fdd66e31163d76ca403e4493221e9543a1d6ff03873aa99b7d8917e2f5daab45", "partition": "8d9035e66b76d18d226e3e282255a2768387ddd3dd73e47b9ce7388b2e0d8490"},
    "codealpaca": {"train": "01b8041ddab01a1987efaa1bcfc22b0e20ec6808afb68b2d7c430e79ed98abe9", "val": "ea401e76b5502bce614602dee7495166aa4bb839c8cb0650aa25ab4b9c982cbf", "test": "126d9d2c4222ab0af49252a57c1389b6d39de16a9cdaed09343fdfe9d54d839b", "partition": "8997281a4aa604c1fc51af79908f9fc5d511eb788495192023069f0f77e9f767"},
    "gsm8k": {"train": "d59923f96c385ab968182b9e858162b79d9cea2ce5b9be80b8248aa55625540f", "val": "ffe968570964ee3a0c45f1d30164086de5571bc71ccc615e292d1b169a840497", "test": "e03a5ccb6d1a93e1007f145ef2235ff43810393dd419edd1219bc30c7a56a38f", "partition": "952e3210132a343510c93c82a8cf8abe759f597c5ef1540c9f5d478b5688fe2d"},
    "quickstart": {"train": "2ef0e169d95e2349562f0bb63a1c782c892af303a26ef46e135dbffdeb225a9d", "val": "d03a479b3bee46769564486c1a30e600736d43e20418454fb16d06947319b8dc", "test": "d0e9daa575edfe2beaa9fdc19d80c4ce1ff954940e447e5f93ca948fe715183c", "partition": "78fc022a8c97653c8f3bdcb2e4655717d557dcd529f2c2187f4f97ec9227d497"},
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_shipped_configs_read_the_pinned_examples(name):
    from zofed.config import load_config

    config = load_config(REPO / "configs" / f"{name}.yaml")
    if config.data.path is not None:  # .../shared/data/<set>/<file>: the shared data wherever it is
        parts = Path(config.data.path).parts
        in_shared = parts[len(parts) - 1 - parts[::-1].index("shared") + 2:]
        config = load_config(REPO / "configs" / f"{name}.yaml", [f"data.path={shared_data(*in_shared)}"])
    data = prepare_data(config)
    digests = {split: json_digest([[e.prompt, e.response, e.category, e.answer] for e in getattr(data.splits, split)])
               for split in ("train", "val", "test")}
    assert digests | {"partition": json_digest(data.client_indices)} == PINNED[name]
