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


CONVERSATION = Example(
    "And of Italy?", "Rome.",
    history=(("system", "Be terse."), ("user", "Capital of France?"), ("assistant", "Paris."),
             ("user", "And of Spain?"), ("assistant", "Madrid, of course.")),
)
# SmolLM2's ChatML with the assistant text marked for transformers' assistant-token mask.
GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def assistant_token_count(tokenizer, texts, end):
    return sum(len(tokenizer(text + end, add_special_tokens=False)["input_ids"]) for text in texts)


def test_every_assistant_turn_is_trained_by_per_turn_prefixes(tokenizer):
    # SmolLM2's own template has no {% generation %}: each turn is located by tokenising its prefix.
    tokens = tokenize_example(tokenizer, CONVERSATION, max_length=256)
    learnt = [t for t in tokens.labels if t != -100]
    assert len(learnt) == assistant_token_count(tokenizer, ["Paris.", "Madrid, of course.", "Rome."], "<|im_end|>\n")
    assert tokenizer.decode(learnt) == "Paris.<|im_end|>\nMadrid, of course.<|im_end|>\nRome.<|im_end|>\n"
    assert "Be terse." in tokenizer.decode(tokens.input_ids)  # the system prompt kept, not trained


def test_every_assistant_turn_is_trained_by_the_templates_assistant_mask(tokenizer):
    import copy

    from zofed.data.tokenize import has_assistant_mask

    marked = copy.deepcopy(tokenizer)
    marked.chat_template = GENERATION_TEMPLATE
    assert has_assistant_mask(marked) and not has_assistant_mask(tokenizer)
    tokens = tokenize_example(marked, CONVERSATION, max_length=256)
    learnt = [t for t in tokens.labels if t != -100]
    # {% generation %} covers the text and <|im_end|>, not the newline after it
    assert len(learnt) == assistant_token_count(tokenizer, ["Paris.", "Madrid, of course.", "Rome."], "<|im_end|>")
    assert tokenizer.decode(learnt) == "Paris.<|im_end|>Madrid, of course.<|im_end|>Rome.<|im_end|>"
    assert tokens.input_ids == tokenize_example(tokenizer, CONVERSATION, max_length=256).input_ids


def test_a_long_conversation_loses_its_start_and_keeps_the_last_turn(tokenizer):
    tokens = tokenize_example(tokenizer, CONVERSATION, max_length=12)
    assert len(tokens.input_ids) == 12
    assert tokenizer.decode([t for t in tokens.labels if t != -100]) == "Rome.<|im_end|>\n"
