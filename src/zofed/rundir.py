"""The run directory (`output_dir/name`): when a run may start, continue or replace it.

Nothing the user owns may be deleted by mistake. A run marks its directory with `MARKER` when it
starts, and `--overwrite` removes only the files zofed writes there (`is_own`: its config copy,
metrics, summary, plot, weights, checkpoints, client copies, event files, lock) from a directory
that carries the marker; a directory holding anything else is refused, naming what it holds. It
never touches the working directory, an ancestor of it, the home directory or an ancestor of that
(whatever `name` and `output_dir` resolve to). `--resume` continues only from a checkpoint that
verifies, with the settings and the data the run started with (`rounds` may grow; `output_dir`
only says where the directory is), and deletes nothing when it refuses. Everything is checked
before any work, so a refused run writes nothing.

One run per directory: a running session holds an OS lock (`flock`) on `LOCK` in its directory
for as long as it runs; the OS releases it however the process ends, and a second process on the
same directory refuses in one line before it deletes or writes anything.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from zofed.atomic import write_atomic
from zofed.checkpoint import Checkpoint, CheckpointError, load_latest_checkpoint
from zofed.config import excerpt, load_yaml
from zofed.errors import ZofedError

MARKER = ".zofed-run"
MARKER_TEXT = "a zofed run directory: `zofed run --overwrite` deletes the files zofed wrote in it\n"
LOCK = ".zofed-lock"
CONFIG_FILE = "config.yaml"
CHANGEABLE_ON_RESUME = frozenset({"rounds", "output_dir"})
# What zofed writes in a run directory: all `--overwrite` may remove.
OWN_FILES = frozenset({MARKER, LOCK, CONFIG_FILE, "metrics.jsonl", "summary.json", "report.png",
                       "final.safetensors", "best.safetensors", "lr_probe.json", "lr_probe.png"})
OWN_DIRECTORIES = frozenset({"checkpoints", "clients", "wandb"})
# TensorBoard's event files, and the staging files of atomic writes a kill left behind (atomic.py)
OWN_PATTERNS = (re.compile(r"events\.out\.tfevents\..+"), re.compile(r"\..+\.\d+\.tmp(\..+)?"))


def is_own(path: Path) -> bool:
    """Whether zofed wrote `path`, an entry of a run directory (links never are)."""
    if path.is_symlink():
        return False
    if path.is_dir():
        return path.name in OWN_DIRECTORIES
    return path.name in OWN_FILES or any(pattern.fullmatch(path.name) for pattern in OWN_PATTERNS)


class RunLock:
    """The OS lock on a run directory, held until `release` (or the process's end, whichever comes first)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._descriptor: int | None = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(self._descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(self._descriptor)
            self._descriptor = None
            if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise _busy(self.root) from None
            raise

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the descriptor releases the lock
            self._descriptor = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *_) -> None:
        self.release()


def _busy(root: Path) -> ZofedError:
    return ZofedError(f"run directory '{root}' is in use by another zofed run (it holds the lock {LOCK}); "
                      "wait for it to end or choose another name=...")


def _refuse_if_busy(root: Path) -> None:
    """Refuse early (before data and model load) when another process holds the directory's lock."""
    path = root / LOCK
    if path.is_symlink() or not path.is_file():
        return
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        raise _busy(root) from None
    finally:
        os.close(descriptor)


def open_run_dir(root: Path, *, resume: bool, overwrite: bool) -> Checkpoint | None:
    """The checkpoint to continue from, or None to start afresh; refuses (deleting nothing) what may not happen.

    With both flags: continue when a checkpoint verifies, else start over (what `zofed compare` and
    a retry loop want).
    """
    root = Path(root)
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise ZofedError(f"run directory '{root}' is not a plain directory; choose another name=... or output_dir=...")
    if root.is_dir():
        _refuse_if_busy(root)
    unverified = None
    if resume and root.is_dir():
        try:
            checkpoint = load_latest_checkpoint(root / "checkpoints")
        except CheckpointError as error:
            checkpoint, unverified = None, str(error)
        if checkpoint is not None:
            return checkpoint
    if resume and not overwrite:
        reason = unverified or f"run directory '{root}' holds no checkpoint that verifies"
        raise ZofedError(
            f"--resume: {reason}, so there is nothing to continue (nothing was deleted); "
            "start over with --overwrite or choose another name=..."
        )
    if root.exists() and not overwrite:
        raise ZofedError(
            f"run directory '{root}' already exists; pass --resume to continue it, "
            "--overwrite to start over, or choose another name=..."
        )
    if root.exists():
        check_removable(root)
    return None


def start_run_dir(root: Path, config: dict[str, Any], checkpoint: Checkpoint | None,
                  data_hashes: dict[str, str] | None = None) -> RunLock:
    """Begin the session under the directory's lock (returned: hold it until the run ends): check a
    resumed run's settings and data, or clear an old directory of zofed's files, or create a new one."""
    root = Path(root)
    if not root.exists():
        return _create(root)
    # Checked before the lock file is made (a refusal writes nothing), and, for a deletion, again under it.
    if checkpoint is not None:
        refuse_changed_settings(root, config)
        refuse_changed_data(checkpoint, data_hashes)
    else:
        check_removable(root)
    lock = RunLock(root)
    try:
        if checkpoint is not None:
            write_atomic(root / MARKER, MARKER_TEXT)  # a run from before the marker existed
            return lock
        check_removable(root)  # the directory may have changed since the check above
        # The marker stays: a kill midway leaves a marked directory that --overwrite clears again.
        for path in root.iterdir():
            if path.name in (MARKER, LOCK):
                continue
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    except BaseException:
        lock.release()
        raise
    return lock


def _create(root: Path) -> RunLock:
    """A new run directory, created under another name with its marker and held lock inside, then renamed
    into place: a kill at any point leaves a marked run directory or none, never an unmarked one."""
    staging = root.with_name(f".{root.name}.starting-{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(staging / MARKER, MARKER_TEXT)
        lock = RunLock(staging)  # the lock is on the file, so it stays held across the rename
        try:
            staging.rename(root)
        except OSError as error:
            lock.release()
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise ZofedError(f"run directory '{root}' was just created by another run; "
                                 "choose another name=... (or --resume it once that run ends)") from None
            raise
        lock.root = root
        return lock
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_removable(root: Path) -> None:
    """Refuse to clear `root` unless zofed made it (its marker) and it holds only files zofed writes."""
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
    others = sorted(path.name for path in Path(root).iterdir() if not is_own(path))
    if others:
        shown = ", ".join(excerpt(name) for name in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise ZofedError(
            f"--overwrite: run directory '{root}' holds files zofed did not write ({shown}), so nothing is deleted; "
            "move them out or choose another name=..."
        )


def refuse_changed_data(checkpoint: Checkpoint, data_hashes: dict[str, str] | None) -> None:
    """A resumed run trains on the data it started with: the hashes in its checkpoint must match."""
    if data_hashes is None:
        return
    saved = checkpoint.extra.get("data_hashes")
    if not isinstance(saved, dict):
        raise ZofedError("--resume: the checkpoint does not record the run's data hashes (an older zofed wrote it), "
                         "so the data cannot be checked; start the run over with --overwrite")
    changed = sorted(key for key in saved.keys() | data_hashes.keys() if saved.get(key) != data_hashes.get(key))
    if changed:
        raise ZofedError(
            f"--resume with changed data ({', '.join(excerpt(key) for key in changed)} differ from the run's start); "
            "a resumed run trains on the data it started with: restore the data files, or start a new run with another name=..."
        )


def refuse_changed_settings(root: Path, config: dict[str, Any]) -> None:
    """A resumed run must be the run it continues: every setting but `rounds` as it started."""
    path = Path(root) / CONFIG_FILE
    try:
        saved = load_yaml(path.read_text(encoding="utf-8"), f"'{path}'")
    except (OSError, UnicodeDecodeError, ZofedError):
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
            f"--resume with changed settings ({', '.join(excerpt(key) for key in changed[:10])}); a resumed run keeps the settings it started with "
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
