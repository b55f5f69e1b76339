import numpy as np
import pytest
import torch

from zofed.messages import Message
from zofed.runtime.codec import CodecError, decode, encode, encode_with_sizes, sizes_of


def test_round_trip_preserves_every_field():
    message = Message(
        kind="seeds",
        round=3,
        config={"lr": 1e-3, "upload": "seeds"},
        tensors={"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)},
        seeds=(0, 2**63 - 1, 42),
        scalars=(0.5, -1.25, 3.0),
        metrics={"train_loss": 1.5},
    )
    decoded = decode(encode(message))
    assert decoded.kind == "seeds" and decoded.round == 3
    assert decoded.config == {"lr": 1e-3, "upload": "seeds"}
    assert torch.equal(decoded.tensors["a"], message.tensors["a"])
    assert decoded.tensors["b"].dtype == torch.bfloat16
    assert decoded.seeds == message.seeds and decoded.scalars == message.scalars
    assert decoded.metrics == {"train_loss": 1.5}


def test_sizes_add_up_to_encoded_length_and_seed_records_are_compact():
    message = Message(kind="seeds", round=1, seeds=tuple(range(30)), scalars=(0.1,) * 30, metrics={"x": 1.0})
    data, sizes = encode_with_sizes(message)
    assert sizes.total == len(data)
    assert sizes.records == 30 * (8 + 4)
    assert sizes.weights == 0


def test_weights_counted_as_weights():
    message = Message(kind="weights", round=1, tensors={"w": torch.zeros(1000)})
    data, sizes = encode_with_sizes(message)
    assert sizes.weights >= 4000 and sizes.total == len(data)


@pytest.mark.parametrize("data", [b"", b"nope", b"ZOF1\x05\x00\x00\x00{bad}", encode(Message(kind="control", round=1))[:-1] + b"x" * 9])
def test_malformed_bytes_are_rejected(data):
    with pytest.raises(CodecError):
        decode(data)


def test_seeds_out_of_range_refused():
    with pytest.raises(ValueError):
        encode(Message(kind="seeds", round=1, seeds=(2**63,), scalars=(1.0,)))


def test_receiver_reads_the_same_sizes_the_sender_counted():
    message = Message(
        kind="seeds", round=2, config={"lr": 0.5}, tensors={"a": torch.ones(3)}, seeds=(1, 2), scalars=(0.25, -1.0, 7.0),
        metrics={"train_loss": float("nan"), "steps": 3.0, "x": 0.1 + 0.2},
    )
    data, sizes = encode_with_sizes(message)
    assert sizes_of(data) == sizes


def _weights_message() -> Message:
    return Message(kind="weights", round=1, config={"x": "odd-length-header"},
                   tensors={"w": torch.randn(4, 5), "b": torch.randn(3).to(torch.bfloat16), "n": torch.arange(3)},
                   seeds=(7,), scalars=(0.5,))


def test_decoded_tensors_view_the_message_bytes_instead_of_copying_them():
    message = _weights_message()
    data = encode(message)
    start = np.frombuffer(data, dtype=np.uint8).ctypes.data
    decoded = decode(data)
    for name, tensor in decoded.tensors.items():
        assert start <= tensor.data_ptr() < start + len(data), name
        assert torch.equal(tensor, message.tensors[name])
    assert decoded.seeds == (7,) and decoded.scalars == (0.5,)


def test_tensor_blob_starts_aligned_so_views_are_aligned():
    for key in ("a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh"):
        data = encode(Message(kind="weights", round=1, config={key: 1}, tensors={"w": torch.ones(3)}))
        header_length = int.from_bytes(data[4:8], "little")
        assert (8 + header_length) % 8 == 0
        assert decode(data).config == {key: 1}


def test_unaligned_buffer_still_decodes_exactly():
    message = _weights_message()
    data = encode(message)
    shifted = memoryview(b"x" + data)[1:]  # the same message, one byte off alignment
    decoded = decode(shifted)
    assert torch.equal(decoded.tensors["w"], decode(data).tensors["w"])
    assert decoded.tensors["b"].dtype == torch.bfloat16 and decoded.tensors["n"].tolist() == [0, 1, 2]


def _with_tensor_header(entry: dict) -> bytes:
    """A weights message whose safetensors header is replaced by `entry` for tensor 'w' (same lengths)."""
    import json

    data = bytearray(encode(Message(kind="weights", round=1, tensors={"w": torch.ones(4)})))
    offset = 8 + int.from_bytes(data[4:8], "little")
    length = int.from_bytes(data[offset:offset + 8], "little")
    header = json.dumps({"w": entry}, separators=(",", ":")).encode().ljust(length)
    assert len(header) == length
    data[offset + 8:offset + 8 + length] = header
    return bytes(data)


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [5], "data_offsets": [0, 20]},  # past the blob
    {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]},  # shape does not match the bytes
    {"dtype": "Q7", "shape": [4], "data_offsets": [0, 16]},  # unknown dtype
    {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]},
])
def test_tensor_headers_that_do_not_match_their_bytes_are_rejected(entry):
    with pytest.raises(CodecError):
        decode(_with_tensor_header(entry))
    assert torch.equal(decode(_with_tensor_header({"dtype": "I32", "shape": [4], "data_offsets": [0, 16]}))
                       .tensors["w"], torch.ones(4).view(torch.int32))
