"""Reading input rows and writing files: the one reader of data files and the one atomic writer.

`read_rows(source)` reads a local JSONL, JSON (a list of objects) or parquet file, every such file of a local
folder, or a split of a `datasets` hub id. Each row is a `Row` (a dict) that remembers where it came from, so a
problem found later is reported as `FILE:LINE: field 'x': ...` with the real line number (blank lines counted).

`write_text` / `write_json` / `write_jsonl` / `atomic_path` write to a temporary sibling, fsync it and rename it
into place, so a kill or a power loss leaves either the old file or the new one. Not protected against: two
processes writing the same path at once (the last rename wins).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoif_train.core.errors import InputError, ModelNotFoundError

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class Where:
    """A row's location: the file (or hub id) and its line (row number for parquet files and hub datasets)."""

    path: str
    line: int | None = None
    kind: type[InputError] = field(default=InputError, compare=False, repr=False)  # the error class to raise

    def error(self, field: str | None = None, message: str = "") -> InputError:
        return self.kind(self.path, self.line, field, message)

    def __str__(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"


class Row(dict):
    """One input row; `where` says where it was read from (the dict itself is the row, unchanged)."""

    where: Where = Where("<memory>")


def _row(obj: dict, where: Where) -> Row:
    row = Row(obj)
    row.where = where
    return row


def is_local(source: str | os.PathLike) -> bool:
    """Whether `source` names a local path rather than a hub id: a path object, a data-file suffix, a leading
    `.`, `/` or `~`, more than one `/` (a hub id has at most one), or a path that exists."""
    if isinstance(source, os.PathLike):
        return True
    return (
        source.endswith(DATA_SUFFIXES)
        or source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or os.path.exists(os.path.expanduser(source))
    )


def _text(path: Path, error: type[InputError]) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise error(path, None, None, f"cannot read: {err}") from err


def _json_rows(path: Path, error: type[InputError]) -> Iterator[tuple[int, Any]]:
    """(line, element) for each element of the JSON list in `path` (or of the first list inside a JSON object;
    its elements are numbered 1, 2, ... instead)."""
    text = _text(path, error)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise error(path, err.lineno, None, f"not valid JSON ({err.msg} at column {err.colno})") from err
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), None)
        if data is not None:
            yield from enumerate(data, start=1)
            return
    if not isinstance(data, list):
        raise error(path, 1, None, "a .json data file must hold a list of objects")
    decoder, pos = json.JSONDecoder(), text.index("[") + 1
    line, counted = 1, 0
    for item in data:
        while text[pos] in " \t\r\n,":
            pos += 1
        line, counted = line + text.count("\n", counted, pos), pos
        yield line, item
        _, pos = decoder.raw_decode(text, pos)


def _jsonl_rows(path: Path, error: type[InputError], problems: list | None = None) -> Iterator[tuple[int, Any]]:
    for n, line in enumerate(_text(path, error).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as err:
            problem = error(path, n, None, f"not valid JSON ({err.msg} at column {err.colno})")
            if problems is None:
                raise problem from err
            problems.append(problem)


def _parquet_rows(path: Path, error: type[InputError]) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        rows = datasets.Dataset.from_parquet(str(path)).to_list()
    except Exception as err:  # noqa: BLE001 - pyarrow raises many types; name the file either way
        raise error(path, None, None, f"cannot read parquet: {err}") from err
    yield from enumerate(rows, start=1)


def _file_rows(path: Path, error: type[InputError], problems: list | None) -> Iterator[tuple[int, Any]]:
    if path.suffix == ".parquet":
        return _parquet_rows(path, error)
    if path.suffix == ".json":
        return _json_rows(path, error)
    return _jsonl_rows(path, error, problems)


def _hub_rows(source: str, split: str, error: type[InputError]) -> list[Row]:
    try:
        import datasets

        rows = datasets.load_dataset(source, split=split).to_list()
    except Exception as err:  # noqa: BLE001 - datasets raises many types (offline, not found, bad split)
        detail = " ".join(str(err).split())[:300]
        raise error(source, None, None, f"not a local file, and not loadable as a hub dataset: {detail}") from err
    return [_row(r, Where(source, n, error)) for n, r in enumerate(rows, start=1)]


def check_fields(row: Row, fields: dict[str, type | tuple[type, ...]]) -> Row:
    """Raise `InputError` at the row's location for the first field that is missing or of the wrong type."""
    for name, kind in fields.items():
        if name not in row:
            raise row.where.error(name, "missing")
        if not isinstance(row[name], kind) or (kind is not bool and isinstance(row[name], bool) and kind in (int, float)):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            want = " or ".join(k.__name__ for k in kinds)
            raise row.where.error(name, f"must be {want}, got {type(row[name]).__name__}")
    return row


def read_rows(
    source: str | os.PathLike,
    fields: dict[str, type | tuple[type, ...]] | None = None,
    split: str = "train",
    nonempty: bool = False,
    error: type[InputError] = InputError,
    problems: list[InputError] | None = None,
) -> list[Row]:
    """The rows of `source` (see the module docstring), each checked to be an object with `fields` of those types.

    Raises `error` (an `InputError` class) naming the file, line and field of the first problem, and so does
    `row.where.error(field, message)` later; `nonempty` also rejects a source with no rows. With a `problems`
    list, a JSONL line that is not a JSON object is appended to it and skipped instead (to report them all)."""
    if not is_local(source):
        rows = _hub_rows(str(source), split, error)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.suffix in DATA_SUFFIXES)
            if not files:
                raise error(path, None, None, f"folder holds no {'/'.join(DATA_SUFFIXES)} files")
        elif path.is_file():
            files = [path]
        else:
            raise error(path, None, None, "file not found")
        rows = []
        for f in files:
            for line, obj in _file_rows(f, error, problems):
                if not isinstance(obj, dict):
                    problem = error(f, line, None, f"expected a JSON object, got {type(obj).__name__}")
                    if problems is None:
                        raise problem
                    problems.append(problem)
                    continue
                rows.append(_row(obj, Where(str(f), line, error)))
    if nonempty and not rows:
        raise error(source, None, None, "no rows")
    if fields:
        for row in rows:
            check_fields(row, fields)
    return rows


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in `path`; a missing file or bad JSON raises `InputError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, None, "file not found")
    try:
        return json.loads(_text(path, InputError))
    except json.JSONDecodeError as err:
        raise InputError(path, err.lineno, None, f"not valid JSON ({err.msg} at column {err.colno})") from err


def check_model_folder(model: str) -> str:
    """`model` unchanged, unless it names a local folder (see `is_local`) that is missing or holds no config.json:
    then `ModelNotFoundError("model folder not found: PATH")`, before anything tries to load it."""
    if not is_local(model):
        return model
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(f"model folder not found: {model}")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"{model}: not a model folder (no config.json)")
    return model


# ---------------------------------------------------------------- atomic writes


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without error, fsync it and rename it onto `path`
    (for writers that want a file name, e.g. `fig.savefig`). On error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically, with fsync."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as JSON (UTF-8, a trailing newline) atomically."""
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write `rows` as JSON lines atomically; returns the row count."""
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    write_text(path, "".join(lines))
    return len(lines)
