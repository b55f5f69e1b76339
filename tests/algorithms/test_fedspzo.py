"""FedSPZO on a tiny random Llama with LoRA: server rebuild, exact accounting, block-restricted steps, errors."""

import math
from dataclasses import replace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from zofed.algorithms import ClientEnv, Rejected, Sent, build_algorithm
from zofed.algorithms.fedspzo import layer_forwards_per_step, split_blocks
from zofed.config import parse_config
from zofed.errors import ZofedError
from zofed.llm.split import ModelSplit
from zofed.runtime.codec import decode, encode
from zofed.zo import Scratch, make_directions, perturb_

from ..runtime.helpers import tiny_config

VOCAB, LAYERS, STEPS = 64, 4, 3


class Tiny:
    """A 4-layer Llama with LoRA on q/v of every layer (or of `layers`), and batches for any client."""

    def __init__(self, layers=None) -> None:
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                             pad_token_id=0))
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], layers_to_transform=layers,
                            init_lora_weights=False)
        self.model = get_peft_model(model, config).eval()
        named = [(n, p) for n, p in self.model.named_parameters() if "lora_" in n]
        self.names = tuple(n for n, _ in named)
        self.parameters = tuple(p for _, p in named)
        self.tensors = tuple(p.data for p in self.parameters)

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: tensor.clone() for name, tensor in zip(self.names, self.tensors)}

    def load_(self, weights) -> None:
        for name, tensor in zip(self.names, self.tensors):
            tensor.copy_(weights[name])

    def loss(self, batch) -> float:
        with torch.inference_mode():
            return float(self.model(**batch, use_cache=False).loss)

    def env(self, client: int, seed: int, examples: int = 10, split=None) -> ClientEnv:
        generator = torch.Generator().manual_seed(100 + client)

        def batches():
            for _ in range(STEPS):
                ids = torch.randint(1, VOCAB, (2, 7), generator=generator)
                mask = torch.ones_like(ids)
                mask[1, 5:] = 0  # one right-padded row
                yield {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

        return ClientEnv(client_id=client, seed=seed, names=self.names, tensors=self.tensors,
                         parameters=self.parameters, batches=batches(), loss=self.loss,
                         loss_for_backward=lambda batch: self.model(**batch).loss, num_examples=examples,
                         split=ModelSplit(self.model, self.tensors) if split is None else split)


def train(algorithm, tiny: Tiny, message, env: ClientEnv):
    """A client round through the codec, as a runtime runs it (weights downlink)."""
    message = decode(encode(message))
    tiny.load_(message.tensors)
    return decode(encode(algorithm.train(replace(message, tensors={}), env)))


SETTINGS = {"lr": 0.05, "mu": 1e-3, "p1": 1, "p2": 3}


def test_one_client_update_equals_the_server_rebuild():
    tiny, algorithm = Tiny(), build_algorithm("fedspzo", SETTINGS)
    state = algorithm.init(tiny.weights(), seed=0)
    [message] = algorithm.configure(state, 1, [0])
    reply = train(algorithm, tiny, message, tiny.env(0, seed=5))
    assert len(reply.seeds) == len(reply.scalars) == STEPS * (1 + 3) and not reply.tensors
    new = algorithm.aggregate(state, 1, [(0, reply)])
    moved = 0.0
    for name, tensor in zip(tiny.names, tiny.tensors):
        assert torch.allclose(new.weights[name], tensor, atol=1e-6, rtol=0), name
        moved = max(moved, (tensor - state.weights[name]).abs().max().item())
    assert moved > 1e-3  # the step really moved the weights


def test_server_takes_the_sample_weighted_mean_of_client_updates():
    tiny, algorithm = Tiny(), build_algorithm("fedspzo", SETTINGS)
    state = algorithm.init(tiny.weights(), seed=0)
    messages = algorithm.configure(state, 1, [0, 1])
    replies, finals = [], []
    for client, (message, examples) in enumerate(zip(messages, (10, 30))):
        replies.append((client, train(algorithm, tiny, message, tiny.env(client, seed=client + 1, examples=examples))))
        finals.append(tiny.weights())
    new = algorithm.aggregate(state, 1, replies)
    for name in tiny.names:
        expected = (10 * finals[0][name] + 30 * finals[1][name]) / 40
        assert torch.allclose(new.weights[name], expected, atol=1e-6, rtol=0), name


class CountingSplit:
    """Wraps a split forward: checks block 1 is at its cached value in every suffix pass."""

    def __init__(self, split: ModelSplit, tensors, block1) -> None:
        self.split, self.tensors, self.block1 = split, tensors, block1
        self.prefixes = self.suffixes = 0
        self.snapshot = None

    @property
    def num_layers(self):
        return self.split.num_layers

    @property
    def tensor_layers(self):
        return self.split.tensor_layers

    def prefix(self, batch, split):
        self.prefixes += 1
        self.snapshot = [self.tensors[i].clone() for i in self.block1]
        return self.split.prefix(batch, split)

    def suffix_loss(self, cache):
        self.suffixes += 1
        assert all(torch.equal(self.tensors[i], held) for i, held in zip(self.block1, self.snapshot))
        return self.split.suffix_loss(cache)


@pytest.mark.parametrize("split_layer, estimator", [(1, "central"), (2, "central"), (3, "central"), (2, "forward")])
def test_layer_forwards_are_counted_exactly(split_layer, estimator):
    tiny = Tiny()
    algorithm = build_algorithm("fedspzo", {**SETTINGS, "split_layer": split_layer, "p1": 2, "p2": 5,
                                            "estimator": estimator})
    calls = []
    for layer in tiny.model.base_model.model.model.layers:
        layer.register_forward_hook(lambda module, args, output: calls.append(1))
    invocations = []
    tiny.model.register_forward_pre_hook(lambda module, args: invocations.append(1))
    block1, _ = split_blocks(ModelSplit(tiny.model, tiny.tensors).tensor_layers, split_layer)
    counting = CountingSplit(ModelSplit(tiny.model, tiny.tensors), tiny.tensors, block1)
    [message] = algorithm.configure(algorithm.init(tiny.weights(), seed=0), 1, [0])
    reply = train(algorithm, tiny, message, tiny.env(0, seed=3, split=counting))
    # by hand: the cached prefix once; central 2 passes a direction; forward 1 a direction and L(θ) once
    # from the cache (block 2's pass), which block 1's directions share
    suffixes = 2 * 5 if estimator == "central" else 5 + 1
    full = 2 * 2 if estimator == "central" else 2
    expected = STEPS * (split_layer + suffixes * (LAYERS - split_layer) + full * LAYERS)
    assert reply.metrics["layer_forwards"] == len(calls) == expected
    assert expected == STEPS * layer_forwards_per_step(LAYERS, split_layer, 2, 5, estimator)
    assert reply.metrics["forward_passes"] == len(invocations) == STEPS * (1 + suffixes + full)
    assert counting.prefixes == STEPS and counting.suffixes == STEPS * suffixes
    assert reply.metrics["split_layer"] == split_layer


def test_default_split_is_half_the_layers():
    tiny, algorithm = Tiny(), build_algorithm("fedspzo", SETTINGS)
    [message] = algorithm.configure(algorithm.init(tiny.weights(), seed=0), 1, [0])
    reply = train(algorithm, tiny, message, tiny.env(0, seed=3))
    assert reply.metrics["split_layer"] == LAYERS // 2
    assert reply.config["blocks"] == {"1": [[0, 8]], "2": [[8, 16]]}  # 2 layers x q,v x A,B below; the rest above


def test_a_block_perturbation_touches_only_its_block_with_full_view_indices():
    tiny = Tiny()
    block1, block2 = split_blocks(ModelSplit(tiny.model, tiny.tensors).tensor_layers, 2)
    before = tiny.weights()
    directions = make_directions("gaussian")
    perturb_(tiny.tensors, 77, 0.5, directions, Scratch(), block=block2)
    for index, (name, tensor) in enumerate(zip(tiny.names, tiny.tensors)):
        if index in block1:
            assert torch.equal(tensor, before[name])
        else:  # z(seed, i) of the whole view's index i, as the server replays it
            z = directions.fill_(torch.empty_like(tensor), 77, index)
            assert torch.equal(tensor, before[name] + 0.5 * z)


def test_a_step_with_a_non_finite_loss_is_skipped_and_still_counted():
    tiny, algorithm = Tiny(), build_algorithm("fedspzo", SETTINGS)

    class Broken(CountingSplit):
        def suffix_loss(self, cache):
            return math.nan

    split = Broken(ModelSplit(tiny.model, tiny.tensors), tiny.tensors, [])
    start = tiny.weights()
    [message] = algorithm.configure(algorithm.init(start, seed=0), 1, [0])
    reply = train(algorithm, tiny, message, tiny.env(0, seed=3, split=split))
    assert reply.metrics["skipped_steps"] == STEPS and len(reply.seeds) == STEPS * (1 + 3) and not any(reply.scalars)
    assert reply.metrics["layer_forwards"] == STEPS * layer_forwards_per_step(LAYERS, 2, 1, 3)
    assert all(torch.allclose(tensor, start[name], atol=1e-7) for name, tensor in zip(tiny.names, tiny.tensors))


def test_malformed_replies_are_rejected_by_accept():
    tiny, algorithm = Tiny(), build_algorithm("fedspzo", SETTINGS)
    state = algorithm.init(tiny.weights(), seed=0)
    [message] = algorithm.configure(state, 1, [0])
    reply = train(algorithm, tiny, message, tiny.env(0, seed=5))
    sent = Sent(0, message, seed=5, examples=10, steps=STEPS)
    assert algorithm.accept(state, sent, reply).config["blocks"] == {"1": [[0, 8]], "2": [[8, 16]]}
    bad = [
        replace(reply, seeds=reply.seeds[:-1], scalars=reply.scalars[:-1]),  # not whole steps
        replace(reply, config={"blocks": {"1": [[0, 8]], "2": [[4, 16]]}}),  # overlapping blocks
        replace(reply, config={"blocks": {"1": [[0, 8]], "2": [[8, 99]]}}),  # beyond the view
        replace(reply, config={"blocks": {"1": [[0, 6]], "2": [[6, 16]]}}),  # layer 1 split between the blocks
        replace(reply, config={}),
    ]
    for malformed in bad:
        with pytest.raises(Rejected):
            algorithm.accept(state, sent, malformed)


def test_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ZofedError, match="p1"):
        tiny_config(tmp_path, "fedspzo", "fedspzo.p1=0")
    with pytest.raises(ZofedError, match=r"p1 \(4\) must be below p2 \(4\)"):
        tiny_config(tmp_path, "fedspzo", "fedspzo.p1=4", "fedspzo.p2=4")
    with pytest.raises(ZofedError, match="split_layer"):
        parse_config({"algorithm": "fedspzo", "fedspzo": {"split_layer": 0}})


def test_splits_the_model_cannot_take_are_clear_errors():
    tiny = Tiny(layers=[2, 3])  # LoRA only above layer 2: a split at 2 leaves block 1 empty
    algorithm = build_algorithm("fedspzo", {**SETTINGS, "split_layer": 2})
    [message] = algorithm.configure(algorithm.init(tiny.weights(), seed=0), 1, [0])
    with pytest.raises(ZofedError, match="block 1 .* no trainable tensors"):
        train(algorithm, tiny, message, tiny.env(0, seed=1))
    tiny = Tiny()
    for split_layer, match in ((LAYERS + 1, "outside 1..4"), (LAYERS, "block 2 .* no trainable tensors")):
        algorithm = build_algorithm("fedspzo", {**SETTINGS, "split_layer": split_layer})
        [message] = algorithm.configure(algorithm.init(tiny.weights(), seed=0), 1, [0])
        with pytest.raises(ZofedError, match=match):
            train(algorithm, tiny, message, tiny.env(0, seed=1))
    algorithm = build_algorithm("fedspzo", SETTINGS)
    [message] = algorithm.configure(algorithm.init(tiny.weights(), seed=0), 1, [0])
    with pytest.raises(ZofedError, match="split forward"):
        algorithm.train(replace(message, tensors={}), replace(tiny.env(0, seed=1), split=None))
