"""Files written whole or not at all, JSON read tolerantly or strictly, safetensors checked without loading.

Nothing here knows the layout of a run folder (core/store.py does); these are the file-level rules every
writer and reader of the runs folder follows:

* a write goes to a temporary file in the same folder and is renamed into place, so a reader sees the old
  file or the new one, never half of one; a failed write raises StorageError naming the file;
* a reader that only needs a value tolerates a missing or unparsable file (``read_json``); one that must tell
  "missing" from "damaged" uses ``read_json_strict`` (RecordError with the reason);
* a safetensors file is checked from its header alone: its size must be exactly what its header describes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from core.errors import StorageError
from core.records import RecordError

__all__ = [
    "MISSING",
    "file_version",
    "read_json",
    "read_json_or_problem",
    "read_json_strict",
    "safetensors_header",
    "storage_error",
    "write_json_atomic",
]


def storage_error(path: Path, exc: OSError) -> StorageError:
    """The one message for a write that failed: which file, why, and what to do."""
    why = exc.strerror or str(exc) or type(exc).__name__
    return StorageError(
        f"could not write {path} ({why}): free some disk space or make the folder writable, then try again "
        "(a run that stopped on this can be resumed)."
    )


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file in the same folder, then rename: readers see old or new, never half."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, StorageError):
            raise
        raise storage_error(path, exc) from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


# -- safetensors files, checked without loading them --------------------------------------------------------
MAX_SAFETENSORS_HEADER = 100_000_000
_HEADER_CACHE: dict[tuple, tuple[dict | None, str | None]] = {}


def safetensors_header(path: Path) -> tuple[dict | None, str | None]:
    """(header, None) for a whole safetensors file, or (None, the reason it is not one: missing, truncated...).

    A safetensors file is an 8-byte header length, a JSON header with each tensor's byte range, then the
    data: the file must end exactly where the last tensor does. Reads the header only; cached per version."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
            if key in _HEADER_CACHE:
                return _HEADER_CACHE[key]
            result = _parse_safetensors_header(fh, st.st_size, path.name)
    except (FileNotFoundError, NotADirectoryError):
        return None, f"{path.name} is missing"
    except OSError as exc:
        return None, f"{path.name} cannot be read ({exc.strerror or exc})"
    if len(_HEADER_CACHE) > 4096:
        _HEADER_CACHE.clear()
    _HEADER_CACHE[key] = result
    return result


def file_version(path: Path) -> tuple | None:
    """What changes when a file is written or replaced (None: it does not exist)."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _parse_safetensors_header(fh, size: int, name: str) -> tuple[dict | None, str | None]:
    if size < 8:
        return None, f"{name} is truncated ({size} bytes)"
    length = int.from_bytes(fh.read(8), "little")
    if length > min(size - 8, MAX_SAFETENSORS_HEADER):
        return None, f"{name} is truncated or not a safetensors file (its header claims {length:,} bytes)"
    try:
        header = json.loads(fh.read(length).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not an object")
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, IndexError):
        return None, f"{name} is not a safetensors file (its header does not parse)"
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return None, f"{name} is truncated ({size:,} of {expected:,} bytes)" if size < expected else (
            f"{name} has {size - expected:,} bytes more than its tensors"
        )
    return header, None


MISSING = object()


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return default


def read_json_or_problem(path: Path) -> Any:
    """The JSON object in ``path``, ``MISSING``, or a string saying what is wrong with it."""
    try:
        data = read_json_strict(path)
    except RecordError as exc:
        return str(exc).removeprefix(f"{path.name} ")
    if data is MISSING or isinstance(data, dict):
        return data
    return f"holds {type(data).__name__}, not a JSON object"


def read_json_strict(path: Path) -> Any:
    """The JSON in ``path``; ``MISSING`` if there is no file; RecordError if it does not parse."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return MISSING
    except UnicodeDecodeError:
        raise RecordError(f"{path.name} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path.name} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
