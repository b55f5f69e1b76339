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
