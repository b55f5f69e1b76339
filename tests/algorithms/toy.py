"""A toy federated least-squares problem that runs any algorithm without a language model."""

from __future__ import annotations

import torch

from zofed.algorithms import ClientEnv
from zofed.runtime.client import KeptInMemory, receive_model_
from zofed.config import FaultsConfig, RobustConfig
from zofed.runtime.codec import decode, encode
from zofed.runtime.round import InProcessTransport, play_round

DIM, OUT = 6, 3


class ToyProblem:
    def __init__(self, clients: int = 3, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.target = torch.randn(DIM, OUT, generator=generator)
        self.inputs = [torch.randn(20 + 10 * c, DIM, generator=generator) for c in range(clients)]
        self.weight = torch.nn.Parameter(torch.zeros(DIM, OUT))
        self.bias = torch.nn.Parameter(torch.zeros(OUT))

    @property
    def names(self) -> tuple[str, ...]:
        return ("weight", "bias")

    def initial(self) -> dict[str, torch.Tensor]:
        return {"weight": torch.zeros(DIM, OUT), "bias": torch.zeros(OUT)}

    def _loss(self, batch) -> torch.Tensor:
        return ((batch["x"] @ self.weight + self.bias - batch["y"]) ** 2).mean()

    def global_loss(self, weights) -> float:
        x = torch.cat(self.inputs)
        return float(((x @ weights["weight"] + weights["bias"] - x @ self.target) ** 2).mean())

    def env(self, client: int, seed: int, steps: int = 5, batch_size: int = 8) -> ClientEnv:
        x = self.inputs[client]
        generator = torch.Generator().manual_seed(seed)

        def batches():
            for _ in range(steps):
                rows = torch.randint(0, len(x), (batch_size,), generator=generator)
                yield {"x": x[rows], "y": x[rows] @ self.target}

        def loss(batch) -> float:
            with torch.inference_mode():
                return float(self._loss(batch))

        return ClientEnv(
            client_id=client,
            seed=seed,
            names=self.names,
            tensors=(self.weight.data, self.bias.data),
            parameters=(self.weight, self.bias),
            batches=batches(),
            loss=loss,
            loss_for_backward=self._loss,
            num_examples=len(x),
        )


def train_client(algorithm, problem: ToyProblem, message, client: int, seed: int,
                 kept: dict[int, KeptInMemory] | None = None, steps: int = 5):
    """One client's round as a runtime runs it: through the codec, downlink applied, reply through the codec."""
    kept = {} if kept is None else kept
    env = problem.env(client, seed=seed, steps=steps)
    message = receive_model_(decode(encode(message)), env.tensors, env.names, kept.setdefault(client, KeptInMemory()))
    return decode(encode(algorithm.train(message, env)))


def kept_tensors(held: KeptInMemory, like) -> list[torch.Tensor]:
    """A client's kept copy, read back into fresh tensors shaped like `like`."""
    tensors = [torch.empty_like(tensor) for tensor in like]
    held.load_into(tensors)
    return tensors


class ToyPopulation:
    """The toy problem as the one round body's population: every listed client sampled every round."""

    def __init__(self, problem: ToyProblem, clients, steps: int) -> None:
        self.problem, self.clients, self.local_steps = problem, clients, steps

    def sample_clients(self, round: int) -> list[int]:
        return list(self.clients if self.clients is not None else range(len(self.problem.inputs)))

    def client_seed(self, round: int, client: int) -> int:
        return 1000 * round + client

    def examples(self, client: int) -> int:
        return len(self.problem.inputs[client])

    def client_env(self, round: int, client: int) -> ClientEnv:
        return self.problem.env(client, seed=self.client_seed(round, client), steps=self.local_steps)


class DictKept:
    """Each client's kept copy as bytes in a dict (one version each: toy runs never resume)."""

    def __init__(self, kept: dict[int, KeptInMemory]) -> None:
        self.kept = kept

    def client(self, client: int, at_most: int) -> KeptInMemory:
        return self.kept.setdefault(client, KeptInMemory())


def run_rounds(algorithm, problem: ToyProblem, rounds: int, clients=None, steps: int = 5, state=None,
               first_round: int = 1, kept: dict[int, KeptInMemory] | None = None, robust: RobustConfig = RobustConfig()):
    """Rounds of the runtimes' one round body (screening included) on the toy problem."""
    state = algorithm.init(problem.initial(), seed=0) if state is None else state
    population = ToyPopulation(problem, clients, steps)
    transport = InProcessTransport(population, algorithm, DictKept({} if kept is None else kept), FaultsConfig(), 0)
    for round in range(first_round, first_round + rounds):
        state, row = play_round(population, algorithm, state, round, transport, robust)
        assert row["rejected"] == {}, row["rejected"]  # honest toy clients are never refused
    return state
