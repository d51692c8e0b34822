"""Files people upload in the dashboard, kept under the runs folder so the runs that use them can be re-run.

    runs/uploads/<sha256[:12]>-<sanitized name>

A file is named by its content: uploading the same bytes again (Streamlit reruns a page on every click)
reuses the stored copy instead of writing another, and two different files never share a path. The name
keeps only letters, digits, '.', '_' and '-', so no upload can name a path outside the folder; a copy is
written under a temporary name and renamed, so a crash never leaves a partial file that would be reused.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

from core.errors import DataError
from core.files import storage_error

UPLOADS_DIR = "uploads"
MAX_NAME_CHARS = 60
MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # as .streamlit/config.toml's maxUploadSize and core.data.MAX_FILE_BYTES


def upload_path(runs_root: str | Path, filename: str, data: bytes) -> Path:
    """Where ``data`` uploaded as ``filename`` is kept: its content hash, then the name without odd characters."""
    digest = hashlib.sha256(data).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(str(filename)).name)[-MAX_NAME_CHARS:].lstrip(".")
    return Path(runs_root) / UPLOADS_DIR / f"{digest}-{safe}"


def save_upload(runs_root: str | Path, filename: str, data: bytes) -> Path:
    """Keep an uploaded file under the runs folder (once per content) and return its path."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise DataError(
            f"{filename} is larger than {MAX_UPLOAD_BYTES // 2**20} MB ({len(data) / 2**20:,.0f} MB): keep the "
            "columns and rows you need, then upload it again."
        )
    path = upload_path(runs_root, filename, data)
    if path.is_file() and path.stat().st_size == len(data):
        return path
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(path, exc) from None
    return path
