"""`zofed export`: a run's weights as a PEFT adapter or a merged model that loads without zofed.

The adapter is written by PEFT itself (`save_pretrained`), so its key names and
`adapter_config.json` are whatever the installed PEFT reads back; zofed only fills in where the
base model lives, which for a built-in model is zofed's cache.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from zofed.errors import ZofedError
from zofed.llm import base_model_path
from zofed.runtime.saved_run import load_run_model, open_run

FORMATS = ("peft", "merged")
ADAPTER_NAME = "default"  # PEFT's name for the one adapter get_peft_model adds
EXPORT_RECORD = "zofed_export.json"


def export_run(run_dir: Path, out: Path, weights: str = "final", format: str | None = None) -> dict:
    """Write the run's `weights` to `out` as `format` (default: peft for LoRA runs, merged for full ones)."""
    config, weights_file = open_run(run_dir, weights)
    lora = config.trainable.mode == "lora"
    format = format or ("peft" if lora else "merged")
    if format not in FORMATS:
        raise ZofedError(f"unknown export format '{format}'; use one of {', '.join(FORMATS)}")
    if format == "peft" and not lora:
        raise ZofedError(f"run '{run_dir}' trained the full parameters, so it has no adapter; export with --format merged")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZofedError(f"export target '{out}' already exists and is not empty; pass a new --out directory or remove it")
    base = base_model_path(config.model) if format == "peft" else None

    loaded, _ = load_run_model(config, weights_file)
    model = loaded.model
    # The runtime turns the KV cache off for training forwards; a user of the export generates.
    model.config.use_cache = True
    record = {
        "run": str(run_dir.resolve()),
        "weights": weights,
        "format": format,
        "model": config.model,
        "base_model": base,
        "task": config.task,
        "system_prompt": config.data.system_prompt,
        "dtype": config.dtype,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target and renamed into place: a failed export leaves no half directory.
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if format == "peft":
            model.peft_config[ADAPTER_NAME].base_model_name_or_path = base
            model.save_pretrained(staging)
        else:
            (model.merge_and_unload() if lora else model).save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
        (staging / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return record | {"out": str(out)}
