"""Before round 1: run the preparations a method declares on its registry entry (`Preparation`).

A preparation fills one field of the method's settings (ZorBA: `memory_profile`). Each runs in a
client process of its own, as a node would: the child builds the run's model and data, asks the
method for its probe rounds (downlinks built by the method's own `configure`), runs each as
client 0's round from the encoded downlink's bytes (`client_round_peak`, which
benchmarks/zorba_memory.py uses for every method), and hands the replies and what the process
measured to the method's `fit`. The value comes back as JSON on the child's last line and is
validated as the settings field's type.

A preparation marked `in_process` (the ZO methods' `lr: auto` range test, runtime/lr_probe.py)
measures no memory: it runs in the run's own process on the run's experiment, once its model is
built, so nothing is loaded twice.

A value the config gives is kept (nothing is measured); on `--resume` the run's own value, saved
in its config.yaml, is reused; otherwise it is measured, and config.yaml records it.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from zofed.algorithms import Algorithm, build_algorithm, get_algorithm
from zofed.algorithms.base import Preparation, PrepareEnv, ProbeResult, Settings
from zofed.config import RunConfig, parse_config, read_config_file
from zofed.errors import ZofedError
from zofed.messages import Message
from zofed.runtime.lr_probe import lr_range_test

# glibc keeps freed memory resident after large frees unless the mmap threshold is fixed; a
# client that lowers layers must give the full-precision copies back for its peak to fall.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


# The in-process measurements a `Preparation.in_process` names.
IN_PROCESS = {"lr_range_test": lr_range_test}


def prepared(config: RunConfig, resume: bool = False, experiment=None, files: dict[str, bytes] | None = None) -> RunConfig:
    """`config` with every preparation its method needs filled: the run's own value on resume, else measured.

    `experiment`: the run's, built from `config`, for the in-process preparations (built here where not given).
    `files` receives what they leave for the run directory (the caller writes them once the directory is its own).
    """
    settings = config.algorithm_settings
    for index, step in enumerate(get_algorithm(config.algorithm).prepare):
        if not step.needed(settings):
            continue
        value = _saved_value(config, step, settings) if resume else None
        if value is None and step.in_process is not None:
            if experiment is None:
                from zofed.runtime.experiment import build_experiment
                experiment = build_experiment(config)
            # the settings filled so far (a preparation may read an earlier one's value)
            value, made = IN_PROCESS[step.in_process](settings, experiment)
            value = _field_value(settings, step, value, "the measurement")
            if files is not None:
                files.update(made)
        elif value is None:  # the child sees the values filled so far (never lr: auto)
            value = measure(config.model_copy(update={"methods": {**config.methods, config.algorithm: settings}}), index)
        settings = settings.model_copy(update={step.fills: value})
    if settings is config.algorithm_settings:
        return config
    return config.model_copy(update={"methods": {**config.methods, config.algorithm: settings}})


def _saved_value(config: RunConfig, step: Preparation, settings: Settings) -> Any:
    saved = config.run_dir / "config.yaml"
    if not saved.is_file():
        return None
    document = read_config_file(saved)  # bounded, UTF-8, no aliases: the run directory is untrusted too
    section = document.get(config.algorithm) if isinstance(document, dict) else None
    raw = section.get(step.fills) if isinstance(section, dict) else None
    return None if raw is None else _field_value(settings, step, raw, f"the run's saved {saved.name}")


def _field_value(settings: Settings, step: Preparation, raw: Any, origin: str) -> Any:
    """`raw` validated as settings field `step.fills`, or one line naming where it came from."""
    try:
        return TypeAdapter(type(settings).model_fields[step.fills].annotation).validate_python(raw)
    except ValidationError as error:
        problem = error.errors()[0]
        raise ZofedError(f"{origin} holds an invalid {step.fills} ({problem['msg']} at "
                         f"{'.'.join(map(str, problem['loc'])) or 'top level'}); give a valid one in the config "
                         "or start the run again without --resume") from None


def measure(config: RunConfig, index: int) -> Any:
    """Preparation `index` of the run's method, measured in a client process of its own."""
    step = get_algorithm(config.algorithm).prepare[index]
    with tempfile.TemporaryDirectory(prefix="zofed-prepare-") as scratch:
        config_path = Path(scratch) / "config.json"
        config_path.write_text(json.dumps(config.to_dict()))
        result = subprocess.run(
            [sys.executable, "-m", "zofed.runtime.prepare", str(config_path), str(index)],
            capture_output=True, text=True, env={**os.environ, **CHILD_ENV},
        )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise ZofedError(f"measuring {config.algorithm}.{step.fills} before round 1 failed ({lines[-1][:300]}); "
                         f"give {config.algorithm}.{step.fills} in the config instead")
    raw = json.loads(result.stdout.strip().splitlines()[-1])
    return _field_value(config.algorithm_settings, step, raw, "the measurement")


def client_round_peak(experiment, algorithm: Algorithm, outbox: list[bytes], client: int, lower: list[int] | None,
                      dtype=None, kept=None) -> tuple[Message, dict]:
    """One client's round as its own process runs it, from the downlink's bytes: its reply and the round's peak RSS.

    `outbox` holds the encoded downlink and nothing else may (it is popped, so the bytes can go
    once decoded); they are resident when the window opens, as bytes from the network would be.
    `lower`: layers to hold in `dtype` for the whole round (lowered before the window opens, so the
    window leaves out the full-precision load before it), or None. `kept`: the client's kept copy
    (`KeptCopy`), loaded and saved inside the window, or None.
    """
    from zofed.metrics import peak_rss_mb, reset_peak_rss
    from zofed.runtime.client import receive_model_
    from zofed.runtime.codec import decode
    env = experiment.client_env(1, client)
    with nullcontext() if lower is None else env.split.lowered(lower, dtype, keep_master=False):
        gc.collect()
        resident = peak_rss_mb()
        reset_peak_rss()
        received = receive_model_(decode(outbox.pop()), env.tensors, env.names, kept)
        reply = algorithm.train(received, env)
        peak = peak_rss_mb()
    return reply, {"resident_before_mb": round(resident, 1), "peak_rss_mb": round(peak, 1)}


def _measure(config: RunConfig, index: int) -> Any:
    """In the child: run preparation `index`'s probes as client 0's rounds and fit them."""
    from zofed.runtime.codec import encode
    from zofed.runtime.experiment import build_experiment, prepare_data
    settings = config.algorithm_settings
    step = get_algorithm(config.algorithm).prepare[index]
    # one local step per probe round: what a round holds at its peak, for the least time
    config = config.model_copy(update={"local": config.local.model_copy(update={"local_steps": 1})})
    experiment = build_experiment(config, prepare_data(config))
    algorithm = build_algorithm(config.algorithm, settings)
    # the model's own tensors, not a copy: a probe's downlink values do not matter here, its size does
    model = PrepareEnv(weights=dict(zip(experiment.view.names, experiment.view.tensors)),
                       split=experiment.client_env(1, 0).split, batch_size=config.local.batch_size)
    results = []
    for probe in step.probes(settings, model):
        outbox, sent = [encode(probe.message)], probe.message.config
        lower, dtype = (list(probe.lowered) or None), probe.dtype
        del probe  # its downlink's tensors (low-precision copies) must not sit in the measured window
        reply, measured = client_round_peak(experiment, algorithm, outbox, 0, lower, dtype)
        results.append(ProbeResult(sent, reply, measured))
    return step.fit(settings, model, results)


def _as_json(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


if __name__ == "__main__":
    raw = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(_as_json(_measure(parse_config(raw), int(sys.argv[2])))))
