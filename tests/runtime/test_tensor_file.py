"""Kept models streamed between a safetensors file and a model's own tensors."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zofed.errors import ZofedError
from zofed.runtime.client import KeptFile
from zofed.runtime.tensor_file import TensorFileError, load_into, read_metadata, save_tensors


def model() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(5, 7, generator=generator), torch.randn(33, generator=generator).bfloat16(),
            torch.randn(3, 2, 2, generator=generator).half(), torch.tensor(2.5), torch.empty(0, 4),
            torch.arange(6, dtype=torch.int64)]


def zeros_like(tensors) -> list[torch.Tensor]:
    return [torch.zeros_like(tensor) for tensor in tensors]


def test_round_trip_is_bit_identical_for_every_dtype(tmp_path):
    tensors = model()
    tensors[0][0, 0] = float("nan")  # NaN bits too: a copy is bytes, not values
    save_tensors(tmp_path / "kept.safetensors", tensors, {"version": "7"})
    into = zeros_like(tensors)
    assert load_into(tmp_path / "kept.safetensors", into) == {"version": "7"}
    for original, loaded in zip(tensors, into):
        assert loaded.dtype == original.dtype and loaded.shape == original.shape
        assert torch.equal(loaded.view(-1).view(torch.uint8), original.view(-1).view(torch.uint8))


def test_files_are_safetensors_both_ways(tmp_path):
    tensors = model()
    save_tensors(tmp_path / "ours.safetensors", tensors, {"version": "3"})
    with safe_open(tmp_path / "ours.safetensors", framework="pt") as theirs:
        assert theirs.metadata() == {"version": "3"}
        assert all(torch.equal(theirs.get_tensor(str(i)), tensor) for i, tensor in enumerate(tensors))
    save_file({str(i): tensor for i, tensor in enumerate(tensors)}, tmp_path / "theirs.safetensors", {"version": "4"})
    into = zeros_like(tensors)
    assert load_into(tmp_path / "theirs.safetensors", into) == {"version": "4"}
    assert all(torch.equal(a, b) for a, b in zip(into, tensors))
    assert read_metadata(tmp_path / "theirs.safetensors") == {"version": "4"}


def test_non_contiguous_tensors_are_written_and_filled_by_value(tmp_path):
    source = torch.randn(6, 4)
    save_tensors(tmp_path / "kept.safetensors", [source.t(), source[:, 1]], {})
    first, second = torch.zeros(6, 4), torch.zeros(6, 3)
    load_into(tmp_path / "kept.safetensors", [first.t(), second[:, 2]])  # views, neither contiguous
    assert torch.equal(first, source) and torch.equal(second[:, 2], source[:, 1]) and not second[:, :2].any()


@pytest.mark.parametrize("damage", ["truncated", "header", "short", "wrong shape", "wrong dtype", "fewer tensors"])
def test_a_damaged_or_foreign_file_is_refused_before_any_tensor_is_written(tmp_path, damage):
    path = tmp_path / "kept.safetensors"
    tensors = model()
    save_tensors(path, tensors, {"version": "1"})
    data = path.read_bytes()
    into = zeros_like(tensors)
    if damage == "truncated":
        path.write_bytes(data[:-3])
    elif damage == "header":
        path.write_bytes(data[:8] + b"#" + data[9:])
    elif damage == "short":
        path.write_bytes(data[:5])
    elif damage == "wrong shape":
        into[0] = torch.zeros(7, 5)
    elif damage == "wrong dtype":
        into[1] = torch.zeros(33)
    else:
        into = into[:-1]
    with pytest.raises(TensorFileError, match="kept.safetensors") as raised:
        load_into(path, into)
    assert "\n" not in str(raised.value) and "delete it" in str(raised.value)
    assert all(not tensor.any() for tensor in into)


def test_a_failed_write_leaves_the_old_file_and_no_staging_file(tmp_path):
    path = tmp_path / "kept.safetensors"
    save_tensors(path, [torch.ones(3)], {"version": "1"})
    with pytest.raises(ZofedError, match="complex"):
        save_tensors(path, [torch.ones(3), torch.ones(2, dtype=torch.complex64)], {"version": "2"})
    assert read_metadata(path) == {"version": "1"} and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_kept_file_without_a_version_is_refused(tmp_path):
    save_file({"0": torch.ones(2)}, tmp_path / "kept.safetensors")
    with pytest.raises(TensorFileError, match="no model version"):
        KeptFile(tmp_path / "kept.safetensors").version
