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


# --- the trust boundary: hostile bytes end in a CodecError, never in anything else ---

import json  # noqa: E402
import struct  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from zofed.runtime.codec import MAX_HEADER_BYTES, MAX_JSON_DEPTH, ReadOnlyError, ReadOnlyTensor, json_depth  # noqa: E402


def _with_header(header_json: str, tail: bytes = b"") -> bytes:
    raw = header_json.encode()
    return b"ZOF1" + struct.pack("<I", len(raw)) + raw + tail


def _header(**fields) -> str:
    header = {"kind": "seeds", "round": 1, "config": {}, "metrics": {}, "tensor_bytes": 0, "seeds": 0, "scalars": 0}
    return json.dumps(header | fields)


@pytest.mark.parametrize("data", [
    _with_header(_header(round=1e400).replace("Infinity", "1e400")),  # OverflowError in int() before
    _with_header(_header(seeds=1e400).replace("Infinity", "1e400")),
    _with_header(_header(round=-1)),
    _with_header(_header(seeds=-1), b"\0" * 4),  # 8 * -1 + 4 * 1 + ... would balance the length
    _with_header(_header(seeds=-2, scalars=4), b"\0" * 0),
    _with_header(_header(scalars=1.0), b"\0" * 4),  # a float count
    _with_header(_header(scalars=True), b"\0" * 4),  # a bool count
    _with_header(_header(scalars="1"), b"\0" * 4),
    _with_header(_header(kind="weightz")),
    _with_header(_header(config=[1, 2])),
    _with_header(_header(metrics="x")),
    _with_header("[" * 100_000 + "]" * 100_000),  # RecursionError in the JSON parser before
    _with_header('{"kind":"seeds","kind":"weights"}'),  # a repeated key
    _with_header(_header(), b"trailing"),
    b"ZOF1" + struct.pack("<I", 2**32 - 1) + b"{}",  # header length past the end
    b"ZOF1\x00",
])
def test_hostile_headers_are_codec_errors(data):
    with pytest.raises(CodecError):
        decode(data)
    with pytest.raises(CodecError):
        sizes_of(data)  # the server reads sizes before decoding: the same boundary


def test_negative_seeds_are_rejected():
    with pytest.raises(CodecError, match="negative"):
        decode(_with_header(_header(seeds=1), b"\xff" * 8))


def test_header_size_and_depth_are_bounded():
    deep = "[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2)
    assert json_depth('{"a":' + deep + ', "s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"["}') == MAX_JSON_DEPTH - 1
    decode(encode(Message(kind="control", round=1, config={"nested": json.loads(deep)})))  # just inside the bound
    with pytest.raises(CodecError, match="deeper"):
        decode(encode(Message(kind="control", round=1, config={"nested": [json.loads(deep)]})))
    with pytest.raises(CodecError, match="exceeds"):
        decode(encode(Message(kind="control", round=1, config={"big": "x" * MAX_HEADER_BYTES})))


def _two_tensor_blob(a: dict, b: dict, data: bytes = bytes(16)) -> bytes:
    """A weights message whose safetensors blob has tensors 'a' and 'b' as given, over `data`."""
    blob_header = json.dumps({"a": a, "b": b}).encode()
    blob_header += b" " * (-len(blob_header) % 8)
    blob = struct.pack("<Q", len(blob_header)) + blob_header + data
    header = _header(kind="weights", tensor_bytes=len(blob))
    padding = " " * (-(8 + len(header)) % 8)
    return _with_header(header + padding, blob)


def test_a_well_formed_hand_made_blob_decodes():
    decoded = decode(_two_tensor_blob({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                      {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}))
    assert set(decoded.tensors) == {"a", "b"} and decoded.tensors["a"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("a, b", [
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}),  # overlap
    ({"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}, {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}),  # overlap
    ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}),  # gap
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}),  # unused tail
    ({"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}, {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}),  # shape not a list
    ({"dtype": "F32", "shape": "ab", "data_offsets": [0, 8]}, {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}),
    ({"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}, {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}),
    ({"dtype": "F32", "shape": [2**62, 0], "data_offsets": [0, 0]}, {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}),  # huge
    ({"dtype": "F32", "shape": [1] * 40, "data_offsets": [0, 4]}, {"dtype": "F32", "shape": [3], "data_offsets": [4, 16]}),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}, {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}),
    ({"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}, {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}),
    ({"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}, {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}),
])
def test_tensor_blobs_must_tile_their_bytes_exactly(a, b):
    with pytest.raises(CodecError):
        decode(_two_tensor_blob(a, b))


def test_repeated_tensor_names_are_rejected():
    data = _two_tensor_blob({"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                            {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]})
    with pytest.raises(CodecError, match="repeats a key"):
        decode(data.replace(b'"b":', b'"a":'))


def test_decoded_views_refuse_writes_into_the_message_bytes():
    message = _weights_message()
    data = encode(message)
    before = bytes(data)
    decoded = decode(data)
    w = decoded.tensors["w"]
    assert isinstance(w, ReadOnlyTensor)
    for write in (lambda: w.add_(1), lambda: w.copy_(torch.zeros(4, 5)), lambda: w.zero_(),
                  lambda: w.__setitem__(0, 1.0), lambda: w[0].fill_(2.0), lambda: w.view(-1).mul_(3),
                  lambda: w.data.normal_(), lambda: torch.add(w, 1, out=w), lambda: w.contiguous().sub_(1),
                  lambda: torch.nn.functional.relu(w, inplace=True), lambda: torch._foreach_add_([w], 1.0)):
        with pytest.raises(ReadOnlyError):
            write()
    with pytest.raises(ValueError):
        w.numpy()[0, 0] = 5.0  # numpy's own read-only flag
    assert data == before
    # reading costs no copy and gives plain tensors that may be written
    target = torch.zeros(4, 5)
    target.copy_(w)
    scaled = w * 2
    assert type(scaled) is torch.Tensor and torch.equal(scaled, message.tensors["w"] * 2)
    scaled.add_(1)
    clone = w.clone()
    assert type(clone) is torch.Tensor
    clone.add_(1)
    assert data == before and torch.equal(w, message.tensors["w"])


def test_writable_buffers_are_protected_too():
    original = encode(_weights_message())
    buffer = bytearray(original)
    w = decode(buffer).tensors["w"]
    with pytest.raises(ReadOnlyError):
        w.add_(1)
    assert bytes(buffer) == original


def _valid_messages() -> list[bytes]:
    return [
        encode(_weights_message()),
        encode(Message(kind="seeds", round=4, config={"lr": 0.1, "replay": {"segments": [[1, 2]]}},
                       seeds=(1, 2, 3), scalars=(0.5, -0.5, 1.0), metrics={"train_loss": float("nan")})),
        encode(Message(kind="delta", round=2, tensors={"a": torch.ones(2, 3), "b": torch.zeros(0)})),
    ]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.integers(0, 2), edits=st.lists(
    st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]), st.integers(0, 10**6),
              st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_messages_decode_or_raise_codec_error_only(which, edits):
    data = bytearray(_valid_messages()[which])
    for kind, position, value in edits:
        if not data:
            break
        position %= len(data)
        if kind == "flip":
            data[position] ^= 1 << (value % 8)
        elif kind == "set":
            data[position] = value
        elif kind == "insert":
            data[position:position] = bytes([value])
        elif kind == "delete":
            del data[position]
        else:
            del data[position:]
    for read in (decode, sizes_of):
        try:
            read(bytes(data))
        except CodecError:
            pass


@settings(max_examples=200, deadline=None)
@given(header=st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(
        ["kind", "round", "config", "metrics", "tensor_bytes", "seeds", "scalars", "x"]), inner, max_size=8)),
    max_leaves=20), tail=st.binary(max_size=40))
def test_arbitrary_headers_decode_or_raise_codec_error_only(header, tail):
    data = _with_header(json.dumps(header, allow_nan=True), tail)
    for read in (decode, sizes_of):
        try:
            read(data)
        except CodecError:
            pass
