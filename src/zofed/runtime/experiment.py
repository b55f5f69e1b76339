"""Everything a run needs, built from a validated config: data, partitions, model, trainable view.

Data is prepared (and checked) before the model is loaded, so bad data fails in a second, not
after a model conversion. The runtimes only see the plain objects built here.
"""

from __future__ import annotations

import hashlib
import secrets
import math
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from zofed.algorithms import ClientEnv
from zofed.config import RunConfig
from zofed.device import model_device, to_device
from zofed.errors import ZofedError
from zofed.data import (
    Example,
    Splits,
    TaskSpec,
    TokenizedExample,
    builtin,
    collate,
    get_task,
    load_splits,
    tokenize_example,
)
from zofed.data.partition import Partition, partition_dataset
from zofed.data.sources import DataSource
from zofed.data.splits import choose_splits, count, to_table
from zofed.llm.models import model_losses
from zofed.llm.split import ModelSplit
from zofed.llm import LoadedModel, LoraSettings, TrainableView, apply_lora, load_model, trainable_view
from zofed.runtime.privacy import expected_batch, planned_noise_multiplier, sampling_rate
from zofed.zo import mix_seed
from zofed.zo.privacy import ExampleLosses, StepPrivacy, secret_generator

# Stream tags keep the seeds of different random choices apart.
SAMPLING_STREAM, BATCH_STREAM, CLIENT_SEED_STREAM = 1, 2, 3


@dataclass(frozen=True)
class FederatedData:
    task: TaskSpec
    splits: Splits
    client_indices: list[list[int]]  # per client, indices into splits.train
    partition: Partition | None = None  # Flower Datasets' partitioner and each client's Arrow dataset

    def train_categories(self) -> list[str | None]:
        """Each training example's category (None where the task has none), in splits.train order."""
        return [example.category for example in self.splits.train]


def prepare_data(config: RunConfig) -> FederatedData:
    task = get_task(config.task)
    data = config.data
    size = None if data.path is not None else builtin_size(data.limit, data.val_size, data.test_size)
    source = load_splits(config.task, data.path, size, config.seed, name=data.name, columns=data.columns)
    test = None
    if data.test_path is not None:
        # data.name is the training dataset's config: it does not carry over to another source.
        tests = load_splits(config.task, data.test_path, None, config.seed, columns=data.columns)
        split = data.test_split or "train"
        where = DataSource(data.test_path, None, split).describe()
        if split not in tests:
            raise ZofedError(f"{where}: no such split; it has {', '.join(tests)}; set data.test_split")
        test = tests[split], where
    elif data.test_split is not None:
        where = DataSource(data.path, data.name, data.test_split).describe()
        if data.test_split not in source:
            raise ZofedError(f"{where}: no such split; it has {', '.join(source)}; set data.test_split")
        test = source[data.test_split], where
    describe = (lambda split: "the built-in task") if data.path is None else (
        lambda split: DataSource(data.path, data.name, split).describe())
    splits = choose_splits(source, data.split, config.seed, data.val_size, data.test_size, data.limit, test, describe)
    if config.local.batch_size > len(splits.train):
        raise ZofedError(f"local.batch_size={config.local.batch_size} exceeds the {len(splits.train)} training "
                         "examples; lower local.batch_size or use more data")
    part = config.partition
    train = to_table(splits.train).select_columns(["category"]).add_column("row", list(range(len(splits.train))))
    result = partition_dataset(part.method, train, config.clients, config.seed, alpha=part.alpha,
                               labels_per_client=part.labels_per_client, shards_per_client=part.shards_per_client,
                               min_size=part.min_size)
    return FederatedData(task, splits, result.indices, result)


def builtin_size(limit: int | None, val_size: int | float, test_size: int | float) -> int:
    """Questions the built-in task generates: data.limit training ones (2000 in all without a limit)
    plus the held-out ones (a fraction of the whole)."""
    if limit is None:
        return builtin.DEFAULT_SIZE
    sizes = {"val_size": val_size, "test_size": test_size}
    fraction = lambda size: isinstance(size, float) and size < 1  # noqa: E731
    # count() refuses what is neither a fraction nor a whole count (1.5, inf) in one line
    fixed = limit + sum(count(size, 0, name) for name, size in sizes.items() if not fraction(size))
    share = sum(size for size in sizes.values() if fraction(size))
    return math.ceil(fixed / (1 - share)) if share < 1 else fixed


def sample_clients(config: RunConfig, round: int) -> list[int]:
    """The round's clients, a pure function of (seed, round), so a resumed run samples the same (and a
    test or an operator can tell in advance which nodes a round will ask)."""
    rng = np.random.default_rng(mix_seed(config.seed, SAMPLING_STREAM, round))
    chosen = rng.choice(config.clients, size=config.sampled_per_round(), replace=False)
    return sorted(int(c) for c in chosen)


@dataclass
class Experiment:
    config: RunConfig
    data: FederatedData
    loaded: LoadedModel
    view: TrainableView
    parameters: tuple[torch.nn.Parameter, ...]
    max_length: int
    train_tokens: list[TokenizedExample]
    val_tokens: list[TokenizedExample]
    test_tokens: list[TokenizedExample]
    accuracy_examples: list[Example]
    _noise_multiplier: float | None = None  # privacy.dp: step's σ once known (privacy_noise_multiplier)

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def device(self) -> torch.device:
        return model_device(self.loaded.model)

    @property
    def pad_token_id(self) -> int:
        return int(self.loaded.tokenizer.pad_token_id)

    def sample_clients(self, round: int) -> list[int]:
        return sample_clients(self.config, round)

    def client_seed(self, round: int, client: int) -> int:
        return mix_seed(self.config.seed, CLIENT_SEED_STREAM, round, client)

    @property
    def local_steps(self) -> int:
        return self.config.local.local_steps

    def examples(self, client: int) -> int | None:
        """The server's count of a client's examples; None in a deployment, where nodes may bring their own data."""
        if self.config.runtime == "flower":
            return None
        return len(self.data.client_indices[client])

    def client_env(self, round: int, client: int) -> ClientEnv:
        """A simulated client's round on the one model: its batches, and the model's live trainable tensors."""
        model = self.model
        model.eval()  # a backprop client before it left the model in train mode
        private = self.step_privacy(client)
        per_example = None if private is None else partial(ExampleLosses, privacy=private)
        loss, loss_for_backward = model_losses(model, per_example)

        return ClientEnv(
            client_id=client,
            seed=self.client_seed(round, client),
            names=self.view.names,
            tensors=self.view.tensors,
            parameters=self.parameters,
            batches=self.client_batches(round, client) if private is None else self.poisson_batches(client),
            loss=loss,
            loss_for_backward=loss_for_backward,
            num_examples=len(self.data.client_indices[client]),
            split=ModelSplit(model, self.view.tensors, per_example),
        )

    @property
    def privacy_noise_multiplier(self) -> float:
        """privacy.dp: step's σ: the config's, or the one planned from privacy.epsilon before round 1. The plan is
        a pure function of the config and the partitions, so every client process derives the same σ."""
        if self._noise_multiplier is None:
            given = self.config.privacy.noise_multiplier
            smallest = min(len(indices) for indices in self.data.client_indices)
            self._noise_multiplier = given if given is not None else planned_noise_multiplier(self.config, smallest)
        return self._noise_multiplier

    def step_privacy(self, client: int) -> StepPrivacy | None:
        """privacy.dp: step's clipping and noise for this client's steps (None without DP): the noise and the
        Poisson samples come from this process's secret generator, never from the run's public seeds."""
        privacy = self.config.privacy
        if privacy.dp != "step":
            return None
        return StepPrivacy(privacy.clip, self.privacy_noise_multiplier, expected_batch(self.config.local.batch_size,
                           len(self.data.client_indices[client])), _secret())

    def poisson_batches(self, client: int) -> Iterator[dict[str, torch.Tensor]]:
        """local_steps batches under privacy.dp: step: each of the client's examples joins a batch independently
        with rate q = batch_size / its example count (1 when it has fewer), the sampling the accountant assumes.
        A batch's size varies (it may be empty); the step divides by the expected size."""
        indices = np.asarray(self.data.client_indices[client])
        rate = sampling_rate(self.config.local.batch_size, len(indices))
        rng = np.random.default_rng(secrets.randbits(128))  # secret: a sample the server could rebuild amplifies nothing
        for _ in range(self.config.local.local_steps):
            chosen = indices[rng.random(len(indices)) < rate]
            yield to_device(collate_or_empty([self.train_tokens[int(i)] for i in chosen], self.pad_token_id),
                            self.device)

    def client_batches(self, round: int, client: int) -> Iterator[dict[str, torch.Tensor]]:
        """local_steps batches drawn by reshuffled passes over the client's data, seeded per round."""
        indices = self.data.client_indices[client]
        local = self.config.local
        rng = np.random.default_rng(mix_seed(self.config.seed, BATCH_STREAM, round, client))
        # One pass at a time, drawn when the last runs out: memory stays one pass whatever local_steps is.
        order: list[int] = []
        for _ in range(local.local_steps):
            while len(order) < local.batch_size:
                order.extend(int(i) for i in rng.permutation(indices))
            chosen, order = order[: local.batch_size], order[local.batch_size :]
            yield to_device(collate([self.train_tokens[i] for i in chosen], self.pad_token_id), self.device)


_SECRET: list[torch.Generator] = []


def _secret() -> torch.Generator:
    """This process's secret generator (privacy.dp: step), seeded once from the operating system."""
    if not _SECRET:
        _SECRET.append(secret_generator())
    return _SECRET[0]


def collate_or_empty(examples: list[TokenizedExample], pad_token_id: int) -> dict[str, torch.Tensor]:
    """`collate`, or a batch of no examples (an empty Poisson sample: the private loss runs no forward on it)."""
    if examples:
        return collate(examples, pad_token_id)
    empty = torch.zeros((0, 1), dtype=torch.long)
    return {"input_ids": empty, "attention_mask": empty.clone(), "labels": empty.clone()}


def json_digest(value) -> str:
    """SHA-256 of a JSON-serialisable value in compact form."""
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()


def data_fingerprint(experiment: Experiment) -> dict[str, str]:
    """SHA-256 of what makes runs comparable: client partitions and the evaluation examples as tokenised."""
    digest = json_digest
    return {
        "partition": digest(experiment.data.client_indices),
        "train": digest([ex.input_ids for ex in experiment.train_tokens]),
        "val": digest([ex.input_ids for ex in experiment.val_tokens]),
        "test": digest([ex.input_ids for ex in experiment.test_tokens]),
        "accuracy": digest([[ex.prompt, ex.answer] for ex in experiment.accuracy_examples]),
    }


def build_model(config: RunConfig) -> tuple[LoadedModel, TrainableView]:
    """The config's model with its adapters (if any) and the view of what it trains."""
    loaded = load_model(config.model, config.dtype, config.device)
    trainable = config.trainable
    if trainable.mode == "lora":
        settings = LoraSettings(trainable.r, trainable.alpha, trainable.dropout, tuple(trainable.target_modules))
        loaded = apply_lora(loaded, settings, seed=config.seed)
    return loaded, trainable_view(loaded, trainable.mode, trainable.layers)


def build_experiment(
    config: RunConfig, data: FederatedData | None = None, model: tuple[LoadedModel, TrainableView] | None = None
) -> Experiment:
    data = data or prepare_data(config)
    loaded, view = model or build_model(config)
    max_length = config.data.max_length or data.task.default_max_length
    tokenizer = loaded.tokenizer

    def tokenize(examples: Sequence[Example]) -> list[TokenizedExample]:
        return [tokenize_example(tokenizer, ex, max_length, config.data.system_prompt) for ex in examples]

    splits = data.splits
    return Experiment(
        config=config,
        data=data,
        loaded=loaded,
        view=view,
        parameters=_parameters_of(loaded.model, view),
        max_length=max_length,
        train_tokens=tokenize(splits.train),
        val_tokens=tokenize(splits.val[: config.eval.val_examples]),
        test_tokens=tokenize(splits.test[: config.eval.test_examples]),
        accuracy_examples=list(splits.test[: config.eval.accuracy_examples]),
    )


def _parameters_of(model: torch.nn.Module, view: TrainableView) -> tuple[torch.nn.Parameter, ...]:
    """The autograd leaves behind the view's tensors, matched by storage, for backprop baselines."""
    by_pointer = {param.data_ptr(): param for param in model.parameters()}
    return tuple(by_pointer[tensor.data_ptr()] for tensor in view.tensors)
