"""Split training examples across clients with Flower Datasets' partitioners.

`partition.method` names one of Flower Datasets' partitioners (flwr_datasets.partitioner); the
training split goes in as an Arrow dataset with a `category` column (the task's label) and a
`row` column (the example's index in the training split), and each client's partition comes back
as an Arrow dataset, from which its rows are read. Every example goes to exactly one client (the
shard and size-based partitioners may leave a few over, as Flower's do) and no client is empty,
or a one-line error says how to fix the request.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zofed.errors import ZofedError

LABEL, ROW, CLIENT = "category", "row", "client"
# Methods that split by the category; a data set with one category cannot be split heterogeneously.
BY_LABEL = ("dirichlet", "pathological", "meta", "shard")
DESCRIPTIONS = {
    "iid": "IidPartitioner over the shuffled examples: equal shares, drawn at random",
    "dirichlet": "DirichletPartitioner by category: per category, client shares ~ Dir(partition.alpha)",
    "pathological": "PathologicalPartitioner by category: partition.labels_per_client categories per client",
    "meta": "NaturalIdPartitioner over the category: whole categories per client (grouped when there are more "
            "categories than clients, a category split when fewer)",
    "shard": "ShardPartitioner by category: examples sorted by category, cut into shards, "
             "partition.shards_per_client shards per client",
    "linear": "LinearPartitioner: client i gets a share proportional to i+1 (size skew, no label skew)",
    "square": "SquarePartitioner: client i gets a share proportional to (i+1)^2",
    "exponential": "ExponentialPartitioner: client i gets a share proportional to e^i",
}
PARTITIONERS = tuple(DESCRIPTIONS)
HINTS = {"dirichlet": ", a larger partition.alpha, a smaller partition.min_size,", "pathological": ", a smaller "
         "partition.labels_per_client,", "shard": ", fewer partition.shards_per_client,",
         "exponential": ", partition.method=square or linear,"}


@dataclass(frozen=True)
class Partition:
    partitioner: object  # the flwr_datasets Partitioner, its dataset assigned (for plots)
    clients: list  # per client, its datasets.Dataset (columns category, row, ...)

    @property
    def indices(self) -> list[list[int]]:
        """Per client, the sorted indices of its examples in the training split."""
        return [sorted(int(row) for row in client[ROW]) for client in self.clients]


def partition_dataset(
    method: str,
    dataset,
    num_clients: int,
    seed: int,
    *,
    alpha: float = 0.5,
    labels_per_client: int = 2,
    shards_per_client: int = 2,
    min_size: int = 1,
) -> Partition:
    """`dataset`: the training split as a datasets.Dataset with `category` and `row` columns."""
    if method not in DESCRIPTIONS:
        raise ZofedError(f"unknown partition method '{method}'; use one of: {', '.join(PARTITIONERS)}")
    if num_clients < 1:
        raise ZofedError(f"clients must be at least 1, got {num_clients}")
    total = len(dataset)
    if num_clients > total:
        raise ZofedError(
            f"cannot split {total} training examples across {num_clients} clients; use fewer clients or more data"
        )
    if method in BY_LABEL:
        _need_labels(dataset[LABEL], method, num_clients)
    if method == "pathological" and labels_per_client > len(set(dataset[LABEL])):
        raise ZofedError(f"partition.labels_per_client={labels_per_client} exceeds the {len(set(dataset[LABEL]))} "
                         "categories of the training examples; lower it")
    partitioner = _partitioner(method, dataset, num_clients, seed, alpha, labels_per_client, shards_per_client, min_size)
    # Flower's partitioners warn (a Dirichlet redraw) and show progress bars (natural ids): our
    # one-line errors replace both.
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            clients = [partitioner.load_partition(client) for client in range(partitioner.num_partitions)]
        except ValueError as error:
            raise ZofedError(f"partition.method={method} cannot split {total} training examples across {num_clients} "
                             f"clients ({_first_sentence(error)}); use fewer clients{HINTS.get(method, '')} or more data") from None
    empty = [client for client, part in enumerate(clients) if len(part) == 0]
    if empty:
        raise ZofedError(f"partition.method={method} leaves client(s) {empty[:5]} without data; use fewer "
                         f"clients{HINTS.get(method, '')} or more data")
    return Partition(partitioner, clients)


def _partitioner(method, dataset, num_clients, seed, alpha, labels_per_client, shards_per_client, min_size):
    from flwr_datasets import partitioner as fp

    if method == "iid":
        # Flower's IidPartitioner cuts contiguous shards: the examples are shuffled (seeded) first.
        made, dataset = fp.IidPartitioner(num_clients), dataset.shuffle(seed=seed)
    elif method == "dirichlet":
        made = fp.DirichletPartitioner(num_clients, LABEL, float(alpha), min_partition_size=min_size, seed=seed)
    elif method == "pathological":
        # first-deterministic: the original paper's assignment, which uses every category when clients allow
        made = fp.PathologicalPartitioner(num_clients, LABEL, labels_per_client, "first-deterministic", seed=seed)
    elif method == "meta":
        # The natural id is the client a category goes to: the category itself when there are as many
        # categories as clients, else categories grouped (or split) as in _meta_clients.
        dataset = dataset.add_column(CLIENT, _meta_clients(dataset[LABEL], num_clients, seed))
        made = fp.NaturalIdPartitioner(CLIENT)
    elif method == "shard":
        # Shards of ceil(n / (clients × shards_per_client)) examples, the last one kept: every example is used.
        size = -(-len(dataset) // (num_clients * shards_per_client))
        made = fp.ShardPartitioner(num_clients, LABEL, shard_size=size, keep_incomplete_shard=True, seed=seed)
    else:
        # size-based partitioners take the examples in order: shuffled (seeded) first, as for iid
        made = {"linear": fp.LinearPartitioner, "square": fp.SquarePartitioner,
                "exponential": fp.ExponentialPartitioner}[method](num_clients)
        dataset = dataset.shuffle(seed=seed)
    made.dataset = dataset
    return made


def _meta_clients(labels: Sequence[str], num_clients: int, seed: int) -> list[int]:
    """Each example's client for `meta`. With at least as many categories as clients, whole categories
    go to the least-loaded client, largest first; with fewer, each category gets a number of clients
    in proportion to its size and is cut among them (seeded). No category is dropped."""
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    owner = [0] * len(labels)
    if len(by_label) >= num_clients:
        loads = [0] * num_clients
        for label in sorted(by_label, key=lambda l: (-len(by_label[l]), l)):
            target = min(range(num_clients), key=lambda c: (loads[c], c))
            loads[target] += len(by_label[label])
            for index in by_label[label]:
                owner[index] = target
        return owner
    seats = {label: 1 for label in by_label}
    for _ in range(num_clients - len(by_label)):
        label = max(sorted(seats), key=lambda l: len(by_label[l]) / seats[l])
        seats[label] += 1
    rng, client = np.random.default_rng(seed), 0
    for label in sorted(by_label):
        for chunk in np.array_split(rng.permutation(by_label[label]), seats[label]):
            for index in chunk:
                owner[int(index)] = client
            client += 1
    return owner


def _need_labels(labels: Sequence[str | None], method: str, num_clients: int) -> None:
    if any(label is None for label in labels):
        raise ZofedError(f"partition.method={method} needs a category for every example, and this task has none; "
                         "use partition.method=iid")
    counts = Counter(labels)
    if len(counts) < 2 and num_clients > 1:
        # Splitting one category by category is an IID split in disguise (chat rows without a
        # category are all 'other'): say so instead of returning an arbitrary size skew.
        (label, count), = counts.items()
        raise ZofedError(f"partition.method={method} splits by category, and all {count} training examples have "
                         f"category '{label}'; use partition.method=iid (or linear/square/exponential), or give "
                         "the rows categories")


def _first_sentence(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text.split(". ")[0][:160]


def partition(
    method: str,
    labels: Sequence[str | None],
    num_clients: int,
    seed: int,
    *,
    alpha: float = 0.5,
    labels_per_client: int = 2,
    shards_per_client: int = 2,
    min_size: int = 1,
) -> list[list[int]]:
    """Per client, sorted indices into `labels`: `partition_dataset` on a table of the labels alone."""
    import datasets

    table = datasets.Dataset.from_dict({LABEL: list(labels), ROW: list(range(len(labels)))})
    return partition_dataset(method, table, num_clients, seed, alpha=alpha, labels_per_client=labels_per_client,
                             shards_per_client=shards_per_client, min_size=min_size).indices


def partition_table(labels: Sequence[str | None], parts: list[list[int]]) -> list[dict]:
    return [
        {"client": client, "size": len(part), "labels": dict(Counter(str(labels[i]) for i in part))}
        for client, part in enumerate(parts)
    ]


def plot_partition(result: Partition, path) -> None:
    """The per-client category counts as Flower Datasets draws them (a stacked bar per client)."""
    import matplotlib

    matplotlib.use("Agg")
    from flwr_datasets.visualization import plot_label_distributions

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        figure, _, _ = plot_label_distributions(result.partitioner, label_name=LABEL, plot_type="bar",
                                                size_unit="absolute", legend=True, legend_title="category",
                                                title="Per client category distribution")
    figure.savefig(path, bbox_inches="tight", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(figure)
