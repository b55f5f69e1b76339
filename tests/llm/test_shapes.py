import pytest
import torch

from zofed.errors import ZofedError
from zofed.llm import load_model
from zofed.llm.shapes import LADDER, SHAPES, build_shape, shape_name, shape_parameters

# Published parameter counts (model cards), in billions.
PUBLISHED = {"smollm2-135m": 0.135, "smollm2-360m": 0.362, "smollm2-1.7b": 1.71, "llama-3.2-1b": 1.24,
             "llama-3.2-3b": 3.21, "llama-3.1-8b": 8.03, "qwen2.5-7b": 7.62}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_shape_has_its_published_size(name):
    assert shape_parameters(name) / 1e9 == pytest.approx(PUBLISHED[name], rel=0.005)


def test_the_ladder_names_only_known_shapes():
    assert set(LADDER) <= set(SHAPES) and "llama-3.1-8b" in LADDER


def test_a_shape_has_fixed_random_weights_in_its_dtype():
    first, second = build_shape("tiny"), build_shape("tiny", torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in second.parameters())
    again = build_shape("tiny")
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), again.parameters()))
    assert not first.training and first.config.use_cache is False


def test_shape_names_and_unknown_shapes():
    assert shape_name("shape:llama-3.2-1b") == "llama-3.2-1b" and shape_name("tiny-llama") is None
    with pytest.raises(ZofedError, match="unknown model shape 'llama-9b'; use one of: tiny, smollm2-135m"):
        shape_name("shape:llama-9b")


def test_load_model_takes_a_shape_with_the_builtin_tokenizer():
    loaded = load_model("shape:tiny")
    assert loaded.num_layers == SHAPES["tiny"]["num_hidden_layers"]
    ids = torch.tensor([loaded.tokenizer.encode("hi there")])
    assert torch.isfinite(loaded.model(input_ids=ids, labels=ids).loss)
