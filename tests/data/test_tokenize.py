import pytest

from zofed.data import Example, collate, encode_prompt, tokenize_example
from zofed.llm import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m-instruct")


def test_loss_mask_covers_exactly_the_response(tokenizer):
    example = Example("What is 2 plus 3?", "5")
    tokens = tokenize_example(tokenizer, example, max_length=128)
    prompt = encode_prompt(tokenizer, example.prompt, 128)
    assert tokens.input_ids[: len(prompt)] == prompt
    assert all(label == -100 for label in tokens.labels[: len(prompt)])
    learnt = [t for t in tokens.labels if t != -100]
    assert tokenizer.decode(learnt).startswith("5<|im_end|>")


def test_truncation_keeps_the_response(tokenizer):
    example = Example("word " * 200, "the answer")
    tokens = tokenize_example(tokenizer, example, max_length=32)
    assert len(tokens.input_ids) == 32
    assert "the answer" in tokenizer.decode([t for t in tokens.labels if t != -100])


def test_collate_pads_right_and_masks_padding(tokenizer):
    short = tokenize_example(tokenizer, Example("Hi?", "Yes"), 64)
    long = tokenize_example(tokenizer, Example("A much longer question here, with more words in it?", "No"), 64)
    assert len(long.input_ids) > len(short.input_ids)
    batch = collate([short, long], pad_token_id=0)
    width = len(long.input_ids)
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"][0].sum() == len(short.input_ids)
    assert (batch["labels"][0, len(short.input_ids):] == -100).all()


def test_system_prompt_replaces_the_default(tokenizer):
    with_default = encode_prompt(tokenizer, "Hi", 256)
    with_short = encode_prompt(tokenizer, "Hi", 256, system_prompt="Be brief.")
    assert "Be brief." in tokenizer.decode(with_short) and len(with_short) < len(with_default)
