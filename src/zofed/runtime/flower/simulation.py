"""`runtime=flower-sim`: the run on Flower's simulation engine, one virtual SuperNode per client.

Flower 1.41's way (its `run_simulation` function is deprecated): `flwr run` against a local
SuperLink in simulation mode, which `flwr` starts itself for a connection whose address is
`:local-in-memory:`. The ServerApp then runs in a process of the SuperLink's and the ClientApps
in Ray workers, each building the experiment once and reusing it across rounds
(`client_train.cached_experiment`); the ServerApp's log, one plain line per round and the summary,
is streamed back as for `runtime=flower`.

`flower.sim_workers` workers (each with its own model copy) train clients at once, and the
machine's cores are split between them: Ray sets each worker's OMP_NUM_THREADS to the CPUs its
client asked for, so asking for one CPU would leave torch one thread where the local runtime
uses them all (measured: 1.15 s against 0.86 s per client round on 2 cores).

The local SuperLink outlives `flwr run` by design (Flower reuses it); this module gives it ports
and a FLWR_HOME of its own and stops it, with everything it started, when the run ends.

On a GPU (`device: cuda` or `auto` on a CUDA machine) every worker puts its model on the one
GPU Ray hands out: each client asks for 1/sim_workers of it (`client-resources-num-gpus`), so
the workers share one accelerator as the local runtime's clients share one model. Ray makes
only the assigned GPU visible inside a worker, where it is `cuda:0`; so `cuda:N` is refused
here (pick the GPU with CUDA_VISIBLE_DEVICES instead).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import psutil
import torch

from zofed.config import RunConfig
from zofed.device import resolve_device
from zofed.errors import ZofedError
from zofed.runtime.flower.deployment import CLIENT_APP, submit_run
from zofed.runtime.flower.loopback import free_port, stop_processes


def run_flower_sim(
    config: RunConfig, *, resume: bool = False, overwrite: bool = False, show_progress: bool = True,
    client_app: str = CLIENT_APP,
) -> dict | None:
    """`client_app`: the ClientApp's component path (tests swap in a wrapper that plays hostile clients)."""
    del show_progress  # the ServerApp runs in the local SuperLink's process tree; its log is streamed instead
    with tempfile.TemporaryDirectory(prefix="zofed-sim-") as scratch:
        home = Path(scratch)
        # Ports of its own: the defaults would meet another run's local SuperLink on this machine.
        ports = {"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port())}
        try:
            returncode, summary = submit_run(
                config, LOCAL_SIMULATION, ports, resume=resume, overwrite=overwrite, home=home,
                extra_args=("--federation-config", simulation_options(config)), client_app=client_app,
            )
        finally:
            stop_local_superlink(home)
    if returncode != 0:
        raise ZofedError(f"`flwr run` on the local simulation SuperLink failed (exit {returncode}); see the log above")
    return summary


LOCAL_SIMULATION = '[superlink]\ndefault = "zofed"\n\n[superlink.zofed]\naddress = ":local-in-memory:"\n'


def sim_backend_config(config: RunConfig) -> dict:
    """Ray's resources: the cores split between the workers, and on CUDA one GPU shared by them all."""
    workers = config.flower.sim_workers
    cpus_per_client = max(1, torch.get_num_threads() // workers)  # the threads the local runtime would use
    device = resolve_device(config.device)
    if device.type == "cuda" and config.device.startswith("cuda:") and device.index != 0:
        raise ZofedError(f"runtime=flower-sim places clients on the GPU Ray assigns, not on device={config.device}; "
                         "use device=cuda and choose the GPU with CUDA_VISIBLE_DEVICES")
    gpus = 1 if device.type == "cuda" else 0
    return {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": gpus / workers},
        "init_args": {"num_cpus": cpus_per_client * workers, "num_gpus": gpus},
    }


def simulation_options(config: RunConfig) -> str:
    """`flwr run --federation-config`: the simulation sized for this run (`sim_backend_config`)."""
    backend = sim_backend_config(config)
    clients, init = backend["client_resources"], backend["init_args"]
    return (f"num-supernodes={config.clients} client-resources-num-cpus={clients['num_cpus']} "
            f"client-resources-num-gpus={float(clients['num_gpus'])} init-args-num-cpus={init['num_cpus']} "
            f"init-args-num-gpus={init['num_gpus']} "
            'init-args-logging-level="ERROR" init-args-log-to-driver=true')


def stop_local_superlink(home: Path) -> None:
    """Stop the local SuperLink `flwr` started for FLWR_HOME `home` (its log file lies there), and
    every process under it (SuperExec, ServerApp, simulation, Ray)."""
    superlinks = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if any("flower-superlink" in part for part in command[:2]) and any(str(home) in part for part in command):
            superlinks.append(process)
    family = []
    for superlink in superlinks:
        try:
            family += [superlink, *superlink.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    stop_processes(family, timeout_s=15)
