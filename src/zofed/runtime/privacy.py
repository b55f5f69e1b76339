"""privacy.dp: step's accountant: the ε each client has spent, from Google's dp_accounting (RDP).

Each local step of a client is one Poisson-subsampled Gaussian mechanism on its data: every
example joins the step's batch independently with rate q = batch_size / the client's example
count, and the step releases P scalars (the method's `scalars_per_step`: P directions on the same
batch), each the sum of per-example values clipped to [−C, C] plus N(0, (σC)²). Together the P
scalars are one Gaussian mechanism of L2 sensitivity C·√P and noise σC per coordinate, i.e. noise
multiplier σ/√P, so one step is `PoissonSampledDpEvent(q, GaussianDpEvent(σ/√P))` and a client's
run is that event composed over every step it ran. The RDP accountant composes them and converts
to (ε, δ). Dividing by the expected batch size and everything the server does with the scalars
afterwards is post-processing, which costs nothing.

The accountant's state is a pure function of what is counted: per client, its local steps so far
and its sampling rate. The driver keeps those counts in the checkpoint (`extra["privacy"]`) and
recomputes ε from them, so a resumed run reports exactly the ε an uninterrupted one does.
Counting is conservative: a sampled client is charged the round's local steps whether or not its
reply arrives or is accepted (it trained either way).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from zofed.errors import ZofedError
from zofed.lazy import lazy_import

dp_accounting = lazy_import("dp_accounting")
# the RDP accountant logs each Rényi order it cannot evaluate and leaves out (the bound stays valid)
logging.getLogger("absl").setLevel(logging.ERROR)

ACCOUNTANT = "dp_accounting RDP (Poisson-subsampled Gaussian)"


def sampling_rate(batch_size: int, examples: int) -> float:
    """q: the chance one example joins a step's Poisson batch (1 for a client with at most batch_size examples)."""
    return 1.0 if examples <= batch_size else batch_size / examples


def expected_batch(batch_size: int, examples: int) -> float:
    """q·n, the size a step's sum is divided by: batch_size, or every example of a smaller client (at least 1)."""
    return float(max(1, min(batch_size, examples)))


def step_event(rate: float, noise_multiplier: float, scalars_per_step: int):
    """One local step as a dp_accounting event: P scalars of one Poisson batch are one Gaussian of multiplier σ/√P."""
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / math.sqrt(scalars_per_step))
    return gaussian if rate >= 1.0 else dp_accounting.PoissonSampledDpEvent(rate, gaussian)


def epsilon(rate: float, noise_multiplier: float, scalars_per_step: int, steps: int, delta: float) -> float:
    """ε at `delta` after `steps` local steps of one client (0 before any; inf without noise)."""
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(step_event(rate, noise_multiplier, scalars_per_step), steps)
    return float(accountant.get_epsilon(delta))


def derive_noise_multiplier(target: float, delta: float, rate: float, scalars_per_step: int, steps: int) -> float:
    """The smallest σ whose `steps` steps at rate `rate` spend at most ε = `target` at `delta`."""

    def event(sigma: float):
        return dp_accounting.SelfComposedDpEvent(step_event(rate, sigma, scalars_per_step), steps)

    try:
        return float(dp_accounting.calibrate_dp_mechanism(
            dp_accounting.rdp.RdpAccountant, event, target, delta,
            dp_accounting.LowerEndpointAndGuess(1e-3, 1.0)))
    except (ValueError, RuntimeError) as error:
        raise ZofedError(f"privacy.epsilon={target}: no noise multiplier reaches it over {steps} steps "
                         f"({str(error)[:120]}); raise privacy.epsilon or give privacy.noise_multiplier") from None


def planned_noise_multiplier(config, smallest_partition: int) -> float:
    """σ for privacy.epsilon, planned before round 1 for the worst case: the client with the highest sampling
    rate (the smallest partition), sampled in every round (rounds × local steps)."""
    privacy, local = config.privacy, config.local
    steps = config.rounds * local.local_steps
    rate = sampling_rate(local.batch_size, smallest_partition)
    return derive_noise_multiplier(privacy.epsilon, privacy.delta, rate,
                                   config.algorithm_settings.scalars_per_step, steps)


def charge_round(counts: Mapping[str, list], row: dict, local_steps: int, batch_size: int,
                 examples: Mapping[int, int | None]) -> dict[str, list]:
    """The counts after a round: every sampled client charged `local_steps` at its sampling rate.

    `examples`: the server's count of each client's examples, or None (a deployment's node keeps its
    own data); then the client's reported `num_examples`, and q = 1 (the worst case) without one.
    """
    reported = {client["client"]: client.get("num_examples") for client in row.get("per_client", ())}
    counts = {client: list(value) for client, value in counts.items()}
    for client in row["clients"]:
        size = examples.get(client) or reported.get(client)
        rate = sampling_rate(batch_size, int(size)) if size else 1.0
        steps, known = counts.get(str(client), [0, 0.0])
        counts[str(client)] = [steps + local_steps, max(known, rate)]
    return counts


def epsilons(counts: Mapping[str, list], noise_multiplier: float, scalars_per_step: int, delta: float) -> dict[str, float]:
    """ε of every client counted so far, by client id (a string, as JSON keys are)."""
    return {client: epsilon(rate, noise_multiplier, scalars_per_step, int(steps), delta)
            for client, (steps, rate) in sorted(counts.items(), key=lambda item: int(item[0]))}


def account_round(config, experiment, counts: Mapping[str, list], row: dict) -> tuple[dict[str, list], dict]:
    """The counts after `row`'s round, and the row with each client's ε (the round row every runtime records)."""
    local = config.local
    examples = {client: experiment.examples(client) for client in row["clients"]}
    counts = charge_round(counts, row, local.local_steps, local.batch_size, examples)
    sigma, scalars = experiment.privacy_noise_multiplier, config.algorithm_settings.scalars_per_step
    spent = epsilons(counts, sigma, scalars, config.privacy.delta)
    per_client = [{**client, "privacy_epsilon": spent[str(client["client"])]} for client in row["per_client"]]
    return counts, {**row, "per_client": per_client, "privacy_epsilon": max(spent.values(), default=0.0),
                    "privacy_epsilon_by_client": spent, "privacy_noise_multiplier": sigma}


def summary(config, experiment, counts: Mapping[str, list]) -> dict:
    """summary.json's `privacy`: the guarantee's parameters and every client's ε at the end of the run."""
    privacy = config.privacy
    sigma = experiment.privacy_noise_multiplier
    spent = epsilons(counts, sigma, config.algorithm_settings.scalars_per_step, privacy.delta)
    return {"dp": privacy.dp, "clip": privacy.clip, "delta": privacy.delta, "noise_multiplier": sigma,
            "noise_multiplier_derived": privacy.noise_multiplier is None, "target_epsilon": privacy.epsilon,
            "epsilon": max(spent.values(), default=0.0), "epsilon_by_client": spent,
            "steps_by_client": {client: int(steps) for client, (steps, _) in counts.items()},
            "accountant": ACCOUNTANT, "sampling": "poisson"}
