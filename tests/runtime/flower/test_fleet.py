"""A fleet on one machine: 32 SuperNodes on loopback (tiny-llama), 5 rounds of 8 sampled clients, with churn —
two nodes leave mid-round and rejoin, one joins after round 1, one is killed with SIGKILL, and the SuperLink is
killed mid-run and restarted on its state database, after which the run resumes. Every round's row says who
was sampled, who answered and who dropped, and the final weights equal a local run with the same drops.

The nodes are cold (`--cold`): with 32 nodes and 8 sampled per round most nodes train once or twice, so a warm
worker per node would hold ~30 models' memory for little saving. Rows and weights are what is checked, never
wall-clock time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import partial

import pytest
import torch
import yaml

from zofed.runtime.driver import round_rows, run_experiment, run_round
from zofed.runtime.experiment import sample_clients
from zofed.runtime.flower.loopback import family_of, stop_processes
from zofed.runtime.round import InProcessTransport

from ..helpers import final_weights, tiny_config
from .test_faults import QUICK_HEARTBEAT, wait_until

pytest.importorskip("flwr")

from zofed.runtime.flower.server_app import _resync_first  # noqa: E402

CLIENTS = 32
LATE = 31  # joins after round 1
LEAVERS = (8, 10)  # sampled in round 2: leave mid-round (SIGTERM) and rejoin at once
KILLED = 4  # sampled in rounds 1, 3 and 4: SIGKILLed mid-round 3 and never back
COMMON = ("rounds=5", f"clients={CLIENTS}", "clients_per_round=8", "local.local_steps=2", "eval.val_examples=8",
          "eval.test_examples=8", "eval.accuracy_examples=0", "fedmezo.upload=seeds", "fedmezo.downlink=replay")
# 31 nodes before round 1 (the late one joins later); a lost node is seen offline by the SuperLink (quick heartbeat),
# so the timeout is only a backstop; the first greeting of 31 nodes and a restart's are slow on 2 cores
FLEET = ("runtime=flower", f"flower.min_nodes={CLIENTS - 1}", "flower.timeout_s=300", "flower.connect_timeout_s=600")
WAIT_S = 900  # any one step of the scenario on a loaded 2-core machine


def trained(log, times: int) -> bool:
    """Whether the SuperNode logging to `log` has received its `times`-th training message (hello and config are queries)."""
    return log.exists() and log.read_text(errors="replace").count("Receiving: train message") >= times


def checkpointed_round(config) -> int:
    latest = config.run_dir / "checkpoints" / "LATEST"
    return int(latest.read_text().strip().removeprefix("ckpt-")) if latest.exists() else 0


class SameDrops(InProcessTransport):
    """The local runtime's clients, except that each round's clients dropped in the fleet run send nothing, and the
    server forgets what they kept (as the Grid transport does for every client that failed)."""

    def __init__(self, drops: dict[int, list[int]], *args) -> None:
        super().__init__(*args)
        self.drops = drops

    def exchange(self, round, downlinks, state):
        gone = set(self.drops.get(round, ()))
        exchanged = super().exchange(round, [(client, downlink) for client, downlink in downlinks if client not in gone], state)
        exchanged.failures.update({client: "dropped in the fleet run" for client in gone})
        exchanged.forget = sorted(exchanged.failures)
        return exchanged


def same_drops_round(drops, experiment, algorithm, state, round, kept):
    transport = SameDrops(drops, experiment, algorithm, kept, experiment.config.faults, experiment.config.seed)
    return run_round(experiment, algorithm, state, round, kept, transport=transport)


@pytest.mark.slow
@pytest.mark.fleet
def test_32_supernodes_with_churn_and_a_superlink_restart_match_a_local_run_with_the_same_drops(tmp_path, deployment):
    config = tiny_config(tmp_path / "fleet", "fedmezo", *COMMON, *FLEET, f"superlink={deployment.superlink}")
    plan = {round: sample_clients(config, round) for round in range(1, 6)}
    # The scenario needs these nodes sampled in these rounds (seed 7); a change of sampling must change the test.
    assert set(LEAVERS) <= set(plan[2]) and {KILLED, LATE} <= set(plan[4]) and KILLED in plan[3] and LEAVERS[1] in plan[3]
    assert LATE not in plan[1], plan

    deployment.env["PYTHONPATH"] = os.pathsep.join([str(QUICK_HEARTBEAT), deployment.env["PYTHONPATH"]])
    # Flower's default: 32 SuperExecs polling their SuperNodes every 0.1 s (the other tests' setting) cost a core.
    deployment.env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = "1"
    database = tmp_path / "superlink.db"
    deployment.start_superlink("--database", str(database))
    nodes = deployment.start_supernodes([k for k in range(CLIENTS) if k != LATE], "--cold")
    config_file = tmp_path / "fleet.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    command = [sys.executable, "-m", "zofed.cli", "run", str(config_file), "--no-progress"]
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(command, env=deployment.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deployment.processes.append(driver)  # stopped with the fleet, whatever happens

    def wait_for(condition, what: str) -> None:  # a step of the run, or the failure that ended the run before it
        wait_until(lambda: condition() or driver.poll() is not None, WAIT_S, what)
        assert condition(), f"the run ended (exit {driver.returncode}) before {what}: {(tmp_path / 'driver.log').read_text()[-3000:]}"

    wait_for(lambda: checkpointed_round(config) >= 1, "round 1")
    deployment.start_supernode(LATE, "--cold")  # greeted by the next round's refresh

    # Mid-round 2: both leavers have their training message (their ClientApps are loading the model); they stop
    # (SIGTERM: a clean leave) and start again at once, as new nodes (new node ids) for the same partitions.
    wait_for(lambda: all(trained(tmp_path / f"supernode-{k}.log", 1) for k in LEAVERS), "round 2's training messages")
    stop_processes([member for k in LEAVERS for member in family_of(nodes[k])])  # both at once: neither finishes meanwhile
    deployment.start_supernodes(LEAVERS, "--cold", log="supernode-{partition}-rejoined.log")

    # Mid-round 3: the doomed node has its second training message (round 1 was its first); its whole family dies.
    wait_for(lambda: trained(tmp_path / f"supernode-{KILLED}.log", 2), "round 3's training message")
    deployment.crash(nodes[KILLED])

    # Mid-run: round 3 checkpointed; the SuperLink (and the ServerApp under it) dies as with its machine, and the
    # submitting `zofed run` loses its stream. Restarted on the same database and port, it still knows the nodes.
    wait_for(lambda: checkpointed_round(config) >= 3, "round 3's checkpoint")
    deployment.crash(deployment.superlink_process)
    assert driver.wait(timeout=120) != 0
    resumed_from = checkpointed_round(config)
    deployment.start_superlink("--database", str(database))
    with open(tmp_path / "resumed.log", "wb") as log:
        resumed = subprocess.Popen([*command, "--resume"], env=deployment.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deployment.processes.append(resumed)
    assert resumed.wait(timeout=WAIT_S) == 0, (tmp_path / "resumed.log").read_text()[-3000:]

    rows = round_rows(config.run_dir)
    assert [row["round"] for row in rows] == [1, 2, 3, 4, 5]  # complete, each round once
    for row in rows:
        assert row["clients"] == plan[row["round"]]  # sampled
        assert sorted(row["answered"] + row["dropped"]) == row["clients"] and not set(row["answered"]) & set(row["dropped"])
        assert [client["client"] for client in row["per_client"]] == row["answered"] and row["rejected"] == {}
    dropped = {row["round"]: set(row["dropped"]) for row in rows}
    reasons = {row["round"]: row["dropped_reasons"] for row in rows}
    assert dropped[1] == set()
    assert dropped[2] - {LATE} == set(LEAVERS)
    if LATE in dropped[2]:  # the late node had not been greeted by round 2's start (it joined while round 1 ended)
        assert reasons[2][str(LATE)] == "no SuperNode"
    assert dropped[3] == {KILLED} and LEAVERS[1] in rows[2]["answered"]  # the rejoined node trains again
    assert dropped[4] == {KILLED} and reasons[4][str(KILLED)] == "no SuperNode" and LATE in rows[3]["answered"]
    assert dropped[5] == set()

    # The same rounds in one process, each round's Flower drops dropped here too, and the SuperLink's restart
    # reproduced: stopped after the checkpoint the fleet resumed from, resumed with everyone re-sent the weights.
    local = tiny_config(tmp_path / "local", "fedmezo", *COMMON)
    drops = {round: sorted(clients) for round, clients in dropped.items()}
    run_experiment(local, show_progress=False, stop_after_round=resumed_from, round_fn=partial(same_drops_round, drops))
    run_experiment(local, resume=True, show_progress=False,
                   round_fn=_resync_first(partial(same_drops_round, drops), range(CLIENTS)))
    assert [row["dropped"] for row in round_rows(local.run_dir)] == [row["dropped"] for row in rows]
    expected, got = final_weights(local), final_weights(config)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name  # bit for bit, as every Flower run (test_equivalence)
