"""eval.py: Rouge-L and GSM8K answer scoring on hand-made strings, metric sets, and batched greedy generation."""

from pathlib import Path

import pytest
import torch

from zofed.config import load_config, parse_config
from zofed.data import Example, encode_prompt, get_task
from zofed.errors import ZofedError
from zofed.eval import (METRICS, generate_greedy, gsm8k_answer, gsm8k_correct, normalise_number, resolve_metrics, rouge_l,
                        score_generations)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("prediction, reference, expected", [
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6),  # LCS "the cat on the mat": P = R = 5/6
    ("a c e", "a b c d", 4 / 7),  # LCS 2: P 2/3, R 2/4, F = 2PR/(P+R) = 4/7
    ("Hello, World!", "hello world", 1.0),  # lower-cased, punctuation is no token
    ("d c b a", "a b c d", 0.25),  # order matters: LCS 1, P = R = 1/4
    ("nothing in common", "a b c d", 0.0),
    ("", "a b c d", 0.0),  # an empty generation scores 0 (FedKSeed)
    ("   ", "a b c d", 0.0),
])
def test_rouge_l_gives_the_f_measure_of_the_longest_common_subsequence(prediction, reference, expected):
    assert rouge_l(prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize("text, normalised", [
    ("72", "72"), ("1,000", "1000"), ("+5", "5"), ("-3", "-3"), ("-0", "0"), ("18.0", "18"), ("18.00", "18"),
    ("0.50", "0.5"), (".5", "0.5"), ("1,234.50", "1234.5"), (" 42 ", "42"),
    ("five", None), ("", None), ("1.2.3", None), ("$5", None),
])
def test_numbers_are_normalised_or_refused(text, normalised):
    assert normalise_number(text) == normalised


@pytest.mark.parametrize("generation, gold, correct", [
    ("She pays 3 * 6 = 18 dollars.\n#### 18", "18", True),
    ("#### 1,000", "1000", True),  # commas dropped
    ("#### 18.00", "18", True),  # trailing zeros dropped
    ("#### $18", "18", True),
    ("#### +7", "7", True),  # a plus sign is no part of the number
    ("####-4 degrees", "-4", True),
    ("First 2 + 3 = 5, then 5 * 2 = 10.", "10", True),  # no ####: the last number written
    ("#### 18 and not 20", "18", True),  # the first number after the mark
    ("3 apples #### 4", "3", False),  # the marked answer wins over earlier numbers
    ("#### 17", "18", False),  # the wrong number
    ("#### -18", "18", False),  # the wrong sign
    ("The answer is 18.5", "18", False),
    ("I do not know.", "18", False),  # no number at all
    ("#### eighteen", "18", False),  # a mark without a number, and no number anywhere
    ("It is 18 ####", "18", True),  # a mark with no number after it: the last number written
    ("#### 18", None, False),  # no gold answer
])
def test_gsm8k_answer_is_the_number_after_the_mark_else_the_last_one(generation, gold, correct):
    assert gsm8k_correct(generation, gold) is correct


def test_gsm8k_answer_says_which_number_it_took():
    assert gsm8k_answer("12 then #### 3,400.0 then 7") == "3400"
    assert gsm8k_answer("12 then 7.") == "7"
    assert gsm8k_answer("none here") is None


def test_scores_average_over_examples_and_answer_metrics_skip_examples_without_an_answer():
    examples = [Example("q1", "the cat sat", answer="4"), Example("q2", "a dog", answer="5"), Example("q3", "x y")]
    texts = ["#### 4", "the answer is 6", "x y"]
    scores = score_generations(["loss", "gsm8k_answer", "exact_match", "rouge_l"], examples, texts,
                               get_task("gsm8k").extract_answer)
    assert list(scores) == ["gsm8k_answer", "exact_match", "rouge_l"]  # loss is no generation metric
    assert scores["gsm8k_answer"] == pytest.approx(1 / 2) and scores["exact_match"] == pytest.approx(1 / 2)
    assert scores["rouge_l"] == pytest.approx((0.0 + 0.0 + 1.0) / 3)


def test_each_task_has_a_default_metric_set_and_answer_metrics_need_answers():
    assert resolve_metrics(get_task("builtin"), None) == ("loss", "exact_match")
    assert resolve_metrics(get_task("gsm8k"), None) == ("loss", "gsm8k_answer")
    for task in ("alpaca", "codealpaca", "dolly", "chat"):
        assert resolve_metrics(get_task(task), None) == ("loss", "rouge_l")
    assert resolve_metrics(get_task("alpaca"), ["rouge_l"]) == ("rouge_l",)
    with pytest.raises(ZofedError, match="exact_match needs gold short answers.*use rouge_l"):
        resolve_metrics(get_task("alpaca"), ["loss", "exact_match"])


def test_the_config_accepts_exactly_the_metrics_eval_scores():
    assert parse_config({}, [f"eval.metrics=[{','.join(METRICS)}]"]).eval.metrics == METRICS
    assert parse_config({}, ["eval.metrics=loss, rouge_l"]).eval.metrics == ("loss", "rouge_l")  # as typed on a command line
    for bad, message in (("[loss,bleu]", "Input should be 'loss'"), ("[loss,loss]", "lists a metric twice"), ("[]", "at least 1")):
        with pytest.raises(ZofedError, match=message):
            parse_config({}, [f"eval.metrics={bad}"])


@pytest.mark.parametrize("config, metrics", [
    ("quickstart.yaml", ("loss", "exact_match")), ("gsm8k.yaml", ("loss", "gsm8k_answer")),
    ("alpaca.yaml", ("loss", "rouge_l")), ("codealpaca.yaml", ("loss", "rouge_l")),
])
def test_shipped_configs_name_their_task_metrics(config, metrics):
    loaded = load_config(CONFIGS / config)
    assert resolve_metrics(get_task(loaded.task), loaded.eval.metrics) == metrics
    assert loaded.eval.accuracy_examples > 0  # its generation metric has examples to score


@pytest.fixture(scope="module")
def tiny():
    """tiny-llama with seeded noise on its weights: as loaded, its greedy answer is "\n" whatever the prompt,
    which would let any batching bug pass; the noise makes each prompt's answer its own."""
    from zofed.llm import load_model

    loaded = load_model("tiny-llama")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in loaded.model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return loaded


def test_batched_generation_equals_one_prompt_at_a_time(tiny):
    tokenizer = tiny.tokenizer
    questions = ["What is 2 plus 2?", "Name the capital of France, please, in one word.", "Hi", "Count to three."]
    prompts = [encode_prompt(tokenizer, question, 64) for question in questions]
    assert len({len(ids) for ids in prompts}) > 1  # different lengths: the batch needs padding
    seen = []
    batched = generate_greedy(tiny.model, tokenizer, prompts, max_new_tokens=6, batch_size=4,
                              progress=lambda done, total: seen.append((done, total)))
    alone = [generate_greedy(tiny.model, tokenizer, [ids], max_new_tokens=6, batch_size=1)[0] for ids in prompts]
    assert batched == alone and seen == [(4, 4)]
    assert len(set(alone)) > 1 and all(alone)  # answers that differ: the comparison can fail
    # Left padding, not right: the same batch padded on the right continues from pad tokens.
    width = max(len(ids) for ids in prompts)
    right = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids in prompts])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(ids) for ids in prompts])[:, None]).long()
    output = tiny.model.generate(input_ids=right, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
    assert [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in output[:, width:]] != alone
