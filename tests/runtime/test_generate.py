"""`zofed generate`: the run's weights answer, with prompts formatted as training formatted them."""

from __future__ import annotations

import io

import pytest
import torch

from tests.runtime.test_export import make_run
from zofed.cli import main
from zofed.data import Example, encode_conversation, tokenize_example
from zofed.llm import load_tokenizer
from zofed.runtime.generate import chat, reply
from zofed.runtime.saved_run import load_run_model, open_run


@pytest.mark.parametrize("system_prompt", [None, "Answer in one word."])
def test_generation_prompt_is_the_training_prompt(system_prompt):
    tokenizer = load_tokenizer("tiny-llama")
    trained = tokenize_example(tokenizer, Example("Capital of France?", "Paris"), 128, system_prompt)
    prompt_length = trained.labels.count(-100)
    turns = [{"role": "user", "content": "Capital of France?"}]
    assert encode_conversation(tokenizer, turns, 128, system_prompt) == trained.input_ids[:prompt_length]


def test_reply_is_greedy_generation_with_the_run_weights(tmp_path):
    config = make_run(tmp_path, "data.system_prompt=Be brief.")
    loaded, _ = load_run_model(*open_run(config.run_dir, "final"))
    turns = [{"role": "user", "content": "Name a colour."}]
    ids = encode_conversation(loaded.tokenizer, turns, 256, "Be brief.")
    expected = loaded.model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, use_cache=False)
    assert reply(loaded, config, turns, max_new_tokens=8) == loaded.tokenizer.decode(expected[0, len(ids):], skip_special_tokens=True).strip()
    other, _ = load_run_model(*open_run(config.run_dir, "best"))
    assert reply(other, config, turns, max_new_tokens=8) != reply(loaded, config, turns, max_new_tokens=8)


def test_chat_carries_the_conversation(tmp_path):
    config = make_run(tmp_path)
    loaded, _ = load_run_model(*open_run(config.run_dir, "final"))
    answers = []
    turns = chat(loaded, config, ["Hello", "", "And then?"], answers.append, max_new_tokens=4)
    assert [t["role"] for t in turns] == ["user", "assistant", "user", "assistant"]
    assert [t["content"] for t in turns[1::2]] == answers
    assert answers[1] == reply(loaded, config, turns[:3], max_new_tokens=4)  # the second answer saw the first exchange


def test_generate_command(tmp_path, capsys, monkeypatch):
    config = make_run(tmp_path)
    assert main(["generate", str(config.run_dir), "Name a colour.", "--max-new-tokens", "5"]) == 0
    single = capsys.readouterr().out.strip()
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a colour.\nAnother one.\n"))
    assert main(["generate", str(config.run_dir), "--chat", "--max-new-tokens", "5"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 2 and lines[0] == single


@pytest.mark.parametrize("args, fragment", [
    (["generate", "RUN"], "either a prompt or --chat"),
    (["generate", "RUN", "hi", "--chat"], "either a prompt or --chat"),
    (["generate", "RUN", "hi", "--max-new-tokens", "0"], "at least 1"),
    (["generate", "NOWHERE", "hi"], "not a run directory"),
])
def test_generate_refusals(tmp_path, capsys, args, fragment):
    config = make_run(tmp_path)
    args = [str(config.run_dir) if a == "RUN" else str(tmp_path / a) if a == "NOWHERE" else a for a in args]
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and fragment in error[0]
