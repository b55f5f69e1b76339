"""Rows of a data source, read by `datasets.load_dataset` and checked on its Arrow tables.

A source is a local .json/.jsonl/.csv/.parquet file, a directory whose files `datasets` maps to
splits by name (train/validation/test...), or a hub dataset id with an optional config name. Each
CSV or Parquet file is read once, by `datasets`; the checks run on the Arrow data it returns
(UTF-8, nesting depth, characters a row, each field's type and presence) and cast the task's
columns to their `datasets.Features`. A bad row stops the load with one line naming the source, the
row number and the field; where a local file is at fault (not UTF-8, a huge line), that file is
read a second time, on this failing path only, to name its line. A JSON file is the exception:
it is parsed once by Python's json and its rows become the `datasets.Dataset` (`Dataset.from_dict`,
the same Arrow data and checks), because pyarrow's JSON reader (which `load_dataset` uses) can
crash the process with a segmentation fault on rows that are not objects (the fuzz test in
tests/test_malformed_input.py found one); that parse also names a bad line exactly. A directory of
JSON files is split by `datasets`' own file-name patterns (train/validation/test...).
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from zofed.errors import ZofedError

Row = dict
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
KINDS = {str: "text", list: "a list"}
# A row is a prompt and a response, a conversation at most: far below this. A row above it is a
# wrong file or a hostile one (tokenisation cuts text to max_length anyway, tokenize.py).
MAX_ROW_CHARS = 1 << 22
MAX_NESTING = 32  # a row's lists and objects inside each other (a chat row is 3 deep)


@dataclass(frozen=True)
class DataSource:
    path: str  # local file or directory, or hub dataset id
    name: str | None = None  # the hub dataset's config name (e.g. "main" for openai/gsm8k)
    split: str = "train"
    columns: Mapping[str, str] = field(default_factory=dict)  # task field -> column of the source
    # The source's splits already read (load_tables), so reading several splits reads the files once.
    tables: Mapping[str, object] | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        path = Path(self.path).expanduser()
        if path.is_file():
            return f"data file {self.path}" + ("" if self.split == "train" else f" split {self.split}")
        kind = "data directory" if path.is_dir() else "hub dataset"
        return f"{kind} {self.path}" + (f" config {self.name}" if self.name else "") + f" split {self.split}"


def read_rows(
    source: DataSource, required: Mapping[str, type], optional: Mapping[str, type] | None = None
) -> list[tuple[str, int, Row]]:
    """(where, row number, row) for every row; a row holds the task's fields under the task's names.

    `required` fields must be present (not null) and of their type; `optional` ones, when present,
    of theirs. Row numbers count from 1 in the order `datasets` reads the rows (blank lines of
    a .jsonl file are skipped, as datasets skips them).
    """
    import datasets

    optional = optional or {}
    fields = {**required, **optional}
    unknown = sorted(set(source.columns) - set(fields))
    if unknown:
        raise ZofedError(
            f"data.columns maps {', '.join(unknown)}, which this task does not read; map its fields {', '.join(fields)}"
        )
    table = _split(source)
    where = source.describe()
    if len(table) == 0:
        raise ZofedError(f"{where} has no rows; give a source with at least one example")
    present = {}
    for name, kind in fields.items():
        column = source.columns.get(name, name)
        shown = f"'{name}'" if column == name else f"'{name}' (column '{column}')"
        if column not in table.column_names:
            if name in required:
                _explain(source)  # a JSON file of non-objects reads as one "text" column: say so instead
                raise ZofedError(f"{where} row 1: missing field {shown}; every row needs {', '.join(required)}")
            continue
        _check_column(table, column, kind, where, shown, name in required, required)
        present[name] = column
    # The task's columns under the task's names, cast to their features: text a string column,
    # a conversation a list of {role, content} (checked turn by turn by the task, with its row number).
    if len(set(present.values())) < len(present):
        raise ZofedError(f"data.columns maps two fields to one column ({dict(source.columns)}); map each field to its own column")
    table = table.select_columns(list(present.values())).rename_columns(
        {column: name for name, column in present.items() if column != name})
    features = datasets.Features({name: datasets.Value("string") if fields[name] is str else table.features[name]
                                  for name in present})
    try:
        table = table.cast(features)
    except Exception as error:  # noqa: BLE001 (a type the checks above let through: say which, in one line)
        raise ZofedError(f"{where}: fields {', '.join(present)} do not cast to the task's types "
                         f"({_first_line(error)}); fix the rows") from None
    return [(where, number, {name: value for name, value in row.items() if value is not None})
            for number, row in enumerate(table.to_list(), start=1)]


def _check_column(table, column: str, kind: type, where: str, shown: str, required: bool, fields) -> None:
    """Presence and type of one field on the Arrow column; the first bad row named."""
    import pyarrow as pa
    import pyarrow.compute as pc

    data = table.data.column(column)
    arrow_type = data.type
    if kind is str and (pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)):
        if required and data.null_count:
            number = int(pc.index(pc.is_null(data), True).as_py()) + 1
            raise ZofedError(f"{where} row {number}: missing field {shown}; every row needs {', '.join(fields)}")
        return
    if pa.types.is_null(arrow_type) and not required:
        return
    # Another type (a number, a list, datasets' Json for mixed JSON values): find the row that holds it.
    for number, value in enumerate(table[column], start=1):
        if value is None:
            if required:
                raise ZofedError(f"{where} row {number}: missing field {shown}; every row needs {', '.join(fields)}")
        elif not isinstance(value, kind):
            raise ZofedError(f"{where} row {number}: field {shown} must be {KINDS[kind]}, got {type(value).__name__}")


def _text_size(value, depth: int) -> int | None:
    """Characters of text in a row's value, or None when it is nested deeper than `depth`."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple, dict)):
        if depth == 0:
            return None
        total = 0
        for item in (value.values() if isinstance(value, dict) else value):
            size = _text_size(item, depth - 1)
            if size is None:
                return None
            total += size
        return total + (sum(len(str(key)) for key in value) if isinstance(value, dict) else 0)
    return 0


def _split(source: DataSource):
    """The source's split `source.split` as a datasets.Dataset."""
    tables = source.tables if source.tables is not None else load_tables(source)
    if source.split not in tables:
        path = Path(source.path).expanduser()
        if path.is_file():
            raise ZofedError(f"data file '{source.path}' has one split, train; drop split '{source.split}' or use a directory")
        origin = "file names" if path.is_dir() else "the hub dataset"
        raise ZofedError(f"{source.describe()}: no split '{source.split}'; it has {', '.join(tables)} (splits come from "
                         f"{origin}); set data.split/data.test_split")
    return tables[source.split]


def load_tables(source: DataSource) -> dict[str, object]:
    """Every split of the source as a datasets.Dataset, by split name (a file has one, `train`).

    The whole source is read once: a directory's or a hub dataset's train, validation and test
    splits come from the same `load_dataset` call.
    """
    import datasets

    # Our own one-line errors replace the libraries' progress bars and warnings (a directory
    # without a dataset card, for one, is normal here).
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    path = Path(source.path).expanduser()
    if path.exists() and source.name is not None:
        raise ZofedError(f"data.name={source.name} names a hub dataset's config, but '{source.path}' is local; remove data.name")
    if path.is_file():
        builder = BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ZofedError(f"data file '{source.path}' is not .json, .jsonl, .csv or .parquet; convert it or point data.path at one")
        if builder == "json":  # pyarrow's JSON reader can crash the process on rows that are not objects
            return _json_tables(source, {"train": [path]}) or _local(source, path, builder, {"data_files": str(path)})
        options = {"data_files": str(path)}
        if builder == "csv":
            # Only an empty cell is missing: pandas' default would also read "NA" or "null" as missing.
            options |= {"features": _text_features(path), "keep_default_na": False, "na_values": [""]}
        return _local(source, path, builder, options)
    if path.is_dir():
        # datasets would also read .txt or image files as rows; a task's rows come in these formats only.
        if not any(file.suffix.lower() in BUILDERS for file in path.rglob("*") if file.is_file()):
            raise ZofedError(f"data directory '{source.path}' has no .json, .jsonl, .csv or .parquet file; point data.path at your data")
        files = [file for file in sorted(path.rglob("*")) if file.is_file() and file.suffix.lower() in BUILDERS]
        if all(file.suffix.lower() in (".json", ".jsonl") for file in files):  # as for a single file
            return _json_tables(source, _splits_of(path)) or _local(source, path, str(path), {})
        for file in files:  # a mixed directory goes to load_dataset: its JSON rows checked first, for the same reason
            if file.suffix.lower() in (".json", ".jsonl"):
                _json_rows(file)
        return _local(source, path, str(path), {})
    if _looks_like_path(source.path):
        # the absolute path tried: a relative one was resolved against the config file's directory
        raise ZofedError(f"data file '{os.path.abspath(path)}' not found; check data.path (a relative path in a config "
                         "file is taken from the file's directory, on the command line from the current one)")
    return _hub(source, datasets)


def _local(source: DataSource, path: Path, builder: str, options: dict) -> dict[str, object]:
    import datasets

    # A throw-away cache: the rows are read into memory once, and nothing piles up in the user's
    # datasets cache for every file a test or a user ever pointed at.
    with tempfile.TemporaryDirectory(prefix="zofed-data-") as cache:
        try:
            loaded = datasets.load_dataset(builder, cache_dir=cache, keep_in_memory=True, **options)
        except Exception as error:  # datasets wraps parse errors of every format in its own types
            _explain(source)
            cause = error.__cause__ or error.__context__ or error
            raise ZofedError(f"{source.describe()} could not be read ({type(cause).__name__}: {_first_line(cause)}); "
                             "fix the file") from None
    tables = dict(loaded)
    for split, table in tables.items():
        _check_table(replace(source, split=split), table)
    return tables


def _splits_of(directory: Path) -> dict[str, list[Path]]:
    """A directory's data files by split, as `load_dataset(directory)` names them (train.jsonl is `train`,
    test.jsonl `test`, dev.json `validation`; a directory without split names is all `train`)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    resolved = DataFilesDict.from_patterns(get_data_patterns(str(directory)), base_path=str(directory))
    return {str(split): [Path(file) for file in files if Path(file).suffix.lower() in (".json", ".jsonl")]
            for split, files in resolved.items()}


def _json_tables(source: DataSource, files_by_split: dict[str, list[Path]]) -> dict[str, object] | None:
    """Each split's JSON files, parsed once, as one in-memory Dataset; the same checks as a loaded table.

    None where a field's values do not share one Arrow type: `load_dataset` then reads the (checked)
    rows again, on this failing path only, so the field checks name the row and what is wrong with it.
    """
    import datasets
    import pyarrow as pa

    tables = {}
    for split, files in files_by_split.items():
        if not files:
            continue
        rows = [row for file in files for row in _json_rows(file)]
        keys = list(dict.fromkeys(key for row in rows for key in row))  # every row's fields, as pyarrow's reader unions them
        try:
            tables[split] = datasets.Dataset.from_dict({key: [row.get(key) for row in rows] for key in keys})
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return None
    for split, table in tables.items():
        _check_table(replace(source, split=split), table)
    return tables


def _hub(source: DataSource, datasets) -> dict[str, object]:
    try:
        tables = dict(datasets.load_dataset(source.path, name=source.name))
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as error:
        if datasets.config.HF_HUB_OFFLINE:
            raise ZofedError(
                f"data '{source.path}' is not a local file or directory and not in the hub cache, and hub downloads are off; "
                f"run with HF_HUB_OFFLINE=0 to download it, or give a local path in data.path"
            ) from None
        raise ZofedError(f"hub dataset '{source.path}' could not be loaded ({_first_line(error)}); check the id and your network") from None
    except ValueError as error:  # an unknown config name, listed by datasets
        raise ZofedError(f"{source.describe()}: {_first_line(error)}; set data.name/data.split/data.test_split") from None
    for split, table in tables.items():
        _check_table(replace(source, split=split), table)
    return tables


def _check_table(source: DataSource, table) -> None:
    """UTF-8, nesting depth and characters a row, on the Arrow data `datasets` read."""
    import pyarrow as pa

    where = source.describe()
    try:
        table.data.table.validate(full=True)  # the JSON reader keeps bytes that are not UTF-8 as they are
    except pa.ArrowInvalid:
        _explain(source)
        raise ZofedError(f"{where}: not UTF-8 text; save the data as UTF-8") from None
    for column in table.data.table.columns:
        if _depth(column.type) > MAX_NESTING:
            _explain(source)
            raise ZofedError(f"{where}: nested more than {MAX_NESTING} levels deep; a row is flat text fields")
    sizes = sum((_characters(column) for column in table.data.table.columns), np.zeros(len(table), dtype=np.int64))
    if len(sizes) and sizes.max() > MAX_ROW_CHARS:
        _explain(source)
        number = int(np.argmax(sizes > MAX_ROW_CHARS)) + 1
        raise ZofedError(f"{where} row {number}: {int(sizes[number - 1]):,} characters, more than a row may hold "
                         f"({MAX_ROW_CHARS:,}); remove or shorten the row")


def _depth(arrow_type) -> int:
    fields = [arrow_type.field(i).type for i in range(arrow_type.num_fields)]
    return 1 + max((_depth(field) for field in fields), default=0) if fields else 0


def _characters(column) -> np.ndarray:
    """Characters of text in each row of an Arrow (chunked) array, nested lists and structs summed."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        parts = [_characters(chunk) for chunk in column.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if isinstance(column, pa.ExtensionArray):  # datasets' Json keeps the JSON text as a string
        column = column.storage
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pc.fill_null(pc.utf8_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = _characters(column.flatten())
        parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
        return np.bincount(parents, weights=inner, minlength=len(column)).astype(np.int64)
    if pa.types.is_struct(kind):
        return sum((_characters(field) for field in column.flatten()), np.zeros(len(column), dtype=np.int64))
    return np.zeros(len(column), dtype=np.int64)


def _explain(source: DataSource) -> None:
    """Raise the exact file and line when a local file is not UTF-8 or not valid JSON, or holds a row too
    deep or too large; return quietly otherwise. This reads the files again: only on a failing path."""
    path = Path(source.path).expanduser()
    files = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
    for file in files:
        if file.is_file() and file.suffix.lower() in (".json", ".jsonl"):
            _json_rows(file)
        elif file.is_file() and file.suffix.lower() == ".csv":
            _check_utf8(file)


def _check_utf8(path: Path) -> None:
    """One line naming the file and line when a text file is not UTF-8 (read a block at a time)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                line += block.count(b"\n", 0, max(error.start, 0))
                raise ZofedError(f"data file {path} line {line}: not UTF-8 text; save the file as UTF-8") from None
            line += block.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ZofedError(f"data file {path} line {line}: not UTF-8 text (it ends mid-character); "
                             "save the file as UTF-8") from None


def _json_rows(path: Path) -> list[dict]:
    """A .json list or .jsonl file's rows, each checked to be an object of bounded size and depth."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        _check_utf8(path)  # names the line
        raise
    if path.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if len(line) > MAX_ROW_CHARS:
                raise ZofedError(f"data file {path} line {number}: {len(line):,} characters, more than a row may hold "
                                 f"({MAX_ROW_CHARS:,}); remove or shorten the row")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ZofedError(f"data file {path} line {number}: invalid JSON ({error.msg}); fix or remove the line") from None
            except RecursionError:
                raise ZofedError(f"data file {path} line {number}: JSON nested too deeply; a row is flat text fields") from None
            rows.append(row)
            if not isinstance(row, dict):
                raise ZofedError(f"data file {path} line {number}: expected a JSON object, got {type(row).__name__}")
            if _text_size(row, MAX_NESTING) is None:
                raise ZofedError(f"data file {path} line {number}: nested more than {MAX_NESTING} levels deep; "
                                 "a row is flat text fields")
        if not rows:
            raise ZofedError(f"data file {path} has no rows; give a file with at least one example")
        return rows
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ZofedError(f"data file {path}: invalid JSON at line {error.lineno} ({error.msg}); fix the file") from None
    except RecursionError:
        raise ZofedError(f"data file {path}: JSON nested too deeply; a data file is a list of flat rows") from None
    if not isinstance(document, list):
        raise ZofedError(f"data file {path}: expected a JSON list of objects; use a list or a .jsonl file")
    for number, row in enumerate(document, start=1):
        if not isinstance(row, dict):
            raise ZofedError(f"data file {path} row {number}: expected a JSON object, got {type(row).__name__}")
        if _text_size(row, MAX_NESTING) is None:
            raise ZofedError(f"data file {path} row {number}: nested more than {MAX_NESTING} levels deep; "
                             "a row is flat text fields")
    if not document:
        raise ZofedError(f"data file {path} has no rows; give a file with at least one example")
    return document


def _text_features(path: Path):
    """Every CSV column as text: pandas would read "42" as a number, and "007" as 7."""
    import datasets

    try:  # the header line only: the rows are read by datasets
        with path.open(newline="", encoding="utf-8") as file:
            header = next(csv.reader(file), None)
    except UnicodeDecodeError:
        _check_utf8(path)  # names the line
        raise
    if not header:
        raise ZofedError(f"data file {path} has no header row; the first line must name the columns")
    return datasets.Features({name: datasets.Value("string") for name in header})


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.lower().endswith(tuple(BUILDERS)) or source.count("/") > 1


def _first_line(error: BaseException, limit: int = 120) -> str:
    """The start of a library's message, escaped: it may quote the file's content."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    line = line if len(line) <= limit else line[:limit] + "..."
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in line)
