import numpy as np
import pytest
import torch

from zofed.data import collate
from zofed.errors import ZofedError
from zofed.runtime.experiment import BATCH_STREAM, build_experiment, prepare_data
from zofed.zo import mix_seed

from .helpers import tiny_config


def test_batches_are_successive_reshuffled_passes_over_the_clients_data(tmp_path):
    config = tiny_config(tmp_path, "fedmezo", "local.local_steps=7", "local.batch_size=9")
    experiment = build_experiment(config)
    indices = experiment.data.client_indices[1]
    # the definition: passes drawn one after another from the (seed, round, client) stream, cut into batches
    rng = np.random.default_rng(mix_seed(config.seed, BATCH_STREAM, 3, 1))
    passes = np.concatenate([rng.permutation(indices) for _ in range(-(-7 * 9 // len(indices)))])
    steps = 0
    for step, batch in enumerate(experiment.client_batches(3, 1)):
        expected = collate([experiment.train_tokens[int(i)] for i in passes[step * 9 : (step + 1) * 9]],
                           experiment.pad_token_id)
        assert all(torch.equal(batch[key], expected[key]) for key in expected), step
        steps += 1
    assert steps == 7


def test_many_local_steps_cost_no_memory_up_front(tmp_path):
    config = tiny_config(tmp_path, "fedmezo", f"local.local_steps={10**12}")
    batches = build_experiment(config).client_batches(1, 0)
    assert [len(next(batches)["input_ids"]) for _ in range(3)] == [4, 4, 4]


def test_batch_larger_than_the_training_set_is_one_clear_error(tmp_path):
    config = tiny_config(tmp_path, "fedmezo", "local.batch_size=100000")
    with pytest.raises(ZofedError, match=r"local.batch_size=100000 exceeds the \d+ training examples"):
        prepare_data(config)
