"""The run directory (`output_dir/name`): when a run may start, continue or replace it.

Nothing the user owns may be deleted by mistake. A run marks its directory with `MARKER` when it
starts, and `--overwrite` removes only a directory that carries it, never the working directory,
an ancestor of it, the home directory or an ancestor of that (whatever `name` and `output_dir`
resolve to). `--resume` continues only from a checkpoint that verifies, with the settings the run
started with (`rounds` may grow; `output_dir` only says where the directory is), and deletes
nothing when it refuses. Everything is checked before any work, so a refused run writes nothing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from zofed.atomic import write_atomic
from zofed.checkpoint import Checkpoint, load_latest_checkpoint
from zofed.errors import ZofedError

MARKER = ".zofed-run"
MARKER_TEXT = "a zofed run directory: `zofed run --overwrite` may delete it\n"
CONFIG_FILE = "config.yaml"
CHANGEABLE_ON_RESUME = frozenset({"rounds", "output_dir"})


def open_run_dir(root: Path, *, resume: bool, overwrite: bool) -> Checkpoint | None:
    """The checkpoint to continue from, or None to start afresh; refuses (deleting nothing) what may not happen.

    With both flags: continue when a checkpoint verifies, else start over (what `zofed compare` and
    a retry loop want).
    """
    root = Path(root)
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise ZofedError(f"run directory '{root}' is not a plain directory; choose another name=... or output_dir=...")
    if resume and root.is_dir():
        checkpoint = load_latest_checkpoint(root / "checkpoints")
        if checkpoint is not None:
            return checkpoint
    if resume and not overwrite:
        raise ZofedError(
            f"--resume: run directory '{root}' holds no checkpoint that verifies, so there is nothing to continue "
            "(nothing was deleted); start over with --overwrite or choose another name=..."
        )
    if root.exists() and not overwrite:
        raise ZofedError(
            f"run directory '{root}' already exists; pass --resume to continue it, "
            "--overwrite to start over, or choose another name=..."
        )
    if root.exists():
        check_removable(root)
    return None


def start_run_dir(root: Path, config: dict[str, Any], checkpoint: Checkpoint | None) -> None:
    """Begin the session: check a resumed run's settings, or replace an old directory by a new, marked one."""
    root = Path(root)
    if checkpoint is not None:
        refuse_changed_settings(root, config)
        write_atomic(root / MARKER, MARKER_TEXT)  # a run from before the marker existed
        return
    # Renamed away before it is deleted and created under another name with its marker inside: a
    # kill at any point leaves either a marked run directory or none, never an unmarked one that
    # --overwrite would then refuse.
    if root.exists():
        check_removable(root)  # again: the directory may have changed since open_run_dir
        doomed = root.with_name(f".{root.name}.deleting-{os.getpid()}")
        root.rename(doomed)
        shutil.rmtree(doomed)
    staging = root.with_name(f".{root.name}.starting-{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(staging / MARKER, MARKER_TEXT)
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_removable(root: Path) -> None:
    """Refuse to delete `root` unless zofed made it and it holds nothing else of the user's."""
    resolved = Path(root).resolve()
    working, home = Path.cwd().resolve(), Path.home().resolve()
    if resolved in {working, *working.parents, home, *home.parents}:
        raise ZofedError(
            f"--overwrite would delete '{resolved}', the working directory, the home directory or one holding them; "
            "choose another name=... or output_dir=..."
        )
    if Path(root).is_symlink() or not (Path(root) / MARKER).is_file():
        raise ZofedError(
            f"--overwrite: '{root}' is not a zofed run directory (it has no {MARKER} marker), so it is not deleted; "
            "remove it yourself or choose another name=..."
        )


def refuse_changed_settings(root: Path, config: dict[str, Any]) -> None:
    """A resumed run must be the run it continues: every setting but `rounds` as it started."""
    path = Path(root) / CONFIG_FILE
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        saved = None
    if not isinstance(saved, dict):
        raise ZofedError(f"--resume: '{path}' is missing or unreadable, so the run's settings cannot be checked; "
                         "start over with --overwrite")
    # through YAML, so tuples and lists (and other spellings of one value) compare equal
    current = yaml.safe_load(yaml.safe_dump(config))
    before, after = _flatten(saved), _flatten(current)
    changed = sorted(key for key in before.keys() | after.keys()
                     if key not in CHANGEABLE_ON_RESUME and before.get(key, _MISSING) != after.get(key, _MISSING))
    if changed:
        raise ZofedError(
            f"--resume with changed settings ({', '.join(changed)}); a resumed run keeps the settings it started with "
            "except rounds: undo the change, or start a new run with another name=..."
        )


_MISSING = object()


def _flatten(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in document.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
