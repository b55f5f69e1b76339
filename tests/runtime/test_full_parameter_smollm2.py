"""Full-parameter ZO on the real model, fp32 and bf16, for every ZO method.

One client, two local steps with the 3-pass in-place step over all 134.5M parameters. The server
rebuilds the client's update from what it uploaded; the client's own model took the same steps
through θ+μz, θ−μz and back, so the two differ only by the rounding of those perturbations. That
gap is measured here and pinned in ulps of the dtype (so the same bound means 2^16 times more in
absolute terms for bf16's 8-bit mantissa than for fp32).
"""

from pathlib import Path

import pytest
import torch

from zofed.algorithms import build_algorithm
from zofed.config import load_config
from zofed.runtime.client import receive_model_
from zofed.runtime.codec import decode, encode
from zofed.runtime.experiment import build_experiment

pytestmark = pytest.mark.slow
QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"

ZO_METHODS = {
    "fedmezo": {"lr": 1e-5, "mu": 1e-3, "upload": "seeds", "directions": "pool"},
    "fedkseed": {"lr": 1e-5, "mu": 1e-3, "num_seeds": 64, "directions": "pool"},
    "decomfl": {"lr": 1e-5, "mu": 1e-3, "directions": "pool"},
}
# Largest |client − server| over all weights, in ulps of the dtype at the magnitude the weight took.
# Two local steps of three roundings each (half an ulp apiece) on the client, one replay on the
# server: measured 2.6-4.3 ulps in both dtypes on this machine.
MAX_ULPS = {"float32": 6.0, "bfloat16": 6.0}


@pytest.fixture(scope="module", params=["fp32", "bf16"])
def experiment(request, tmp_path_factory):
    config = load_config(QUICKSTART, [
        f"output_dir={tmp_path_factory.mktemp('runs')}", f"dtype={request.param}", "trainable.mode=full",
        "clients=1", "clients_per_round=1", "rounds=1", "data.limit=60", "data.val_size=8", "data.test_size=8",
        "local.local_steps=2", "local.batch_size=2",
    ])
    return build_experiment(config)


@pytest.mark.parametrize("name", sorted(ZO_METHODS))
def test_full_parameter_round_moves_the_model_and_server_agrees(experiment, name):
    view = experiment.view
    assert sum(t.numel() for t in view.tensors) == 134_515_008
    algorithm = build_algorithm(name, ZO_METHODS[name])
    initial = view.state_dict()
    state = algorithm.init(initial, seed=0)
    [message] = algorithm.configure(state, 1, [0])
    env = experiment.client_env(1, 0)
    message = receive_model_(decode(encode(message)), env.tensors, env.names, None)
    reply = decode(encode(algorithm.train(message, env)))
    assert reply.metrics["steps"] == 2 and reply.metrics["skipped_steps"] == 0
    assert torch.isfinite(torch.tensor(reply.metrics["train_loss"]))
    client_model = view.state_dict()
    state = algorithm.aggregate(state, 1, [(0, reply)])

    moved = sum(int((client_model[n] != initial[n]).sum()) for n in initial)
    # fp32: a ZO step moves (almost) every weight. bf16: an update below half an ulp moves a weight by one ulp
    # with probability |update|/ulp (stochastic rounding, docs/directions.md): 46% of them for FedKSeed here.
    assert moved > (0.5 if view.tensors[0].dtype == torch.float32 else 0.3) * 134_515_008
    mu = ZO_METHODS[name]["mu"]
    worst_ulps = max(ulps_apart(client_model[n], state.weights[n], floor=5 * mu) for n in initial)
    print(f"{name} {view.tensors[0].dtype}: client vs server {worst_ulps:.2f} ulps")
    assert worst_ulps <= MAX_ULPS[str(view.tensors[0].dtype).removeprefix("torch.")]
    view.load_(initial)  # the module's next test starts from the pretrained weights again


def ulps_apart(a: torch.Tensor, b: torch.Tensor, floor: float) -> float:
    """|a − b| in ulps of the largest value the weight took: |θ|, or |θ ± μz| ≈ 5μ for a weight near 0."""
    spacing = torch.finfo(a.dtype).eps * torch.maximum(a.float().abs(), b.float().abs()).clamp_min(floor)
    return float(((a.float() - b.float()).abs() / spacing).max())
