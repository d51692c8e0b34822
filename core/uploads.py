"""Files people upload in the dashboard, kept under the runs folder so the runs that use them can be re-run.

    runs/uploads/<sha256[:12]>-<sanitized name>

A file is named by its content: uploading the same bytes again (Streamlit reruns a page on every click)
reuses the stored copy instead of writing another, and two different files never share a path.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

UPLOADS_DIR = "uploads"
MAX_NAME_CHARS = 60


def upload_path(runs_root: str | Path, filename: str, data: bytes) -> Path:
    """Where ``data`` uploaded as ``filename`` is kept: its content hash, then the name without odd characters."""
    digest = hashlib.sha256(data).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", filename)[-MAX_NAME_CHARS:]
    return Path(runs_root) / UPLOADS_DIR / f"{digest}-{safe}"


def save_upload(runs_root: str | Path, filename: str, data: bytes) -> Path:
    """Keep an uploaded file under the runs folder (once per content) and return its path."""
    path = upload_path(runs_root, filename, data)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return path
