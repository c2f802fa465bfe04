"""Remembered PACS servers: address and user in a small JSON in the user config dir, never a password."""
from __future__ import annotations

import json
import os
from pathlib import Path

import platformdirs

from ..atomic import replacing

CONFIG_ENV = "MEDGEN_CONFIG_DIR"  # overrides the config dir (tests, portable installs)
MAX_SERVERS = 10


def servers_file() -> Path:
    root = os.environ.get(CONFIG_ENV) or platformdirs.user_config_dir("napari-medgen", appauthor=False)
    return Path(root) / "pacs_servers.json"


def load_servers() -> list[dict]:
    """Remembered servers, most recent first: ``[{"url": ..., "user": ...}]`` (a broken file reads as none)."""
    try:
        items = json.loads(servers_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [{"url": str(i["url"]), "user": str(i.get("user", ""))} for i in items
            if isinstance(i, dict) and i.get("url")]


def remember_server(url: str, user: str = "") -> None:
    """Put a server first in the list (the password is never written)."""
    items = [{"url": url, "user": user}] + [i for i in load_servers() if i["url"] != url]
    with replacing(servers_file()) as tmp:
        tmp.write_text(json.dumps(items[:MAX_SERVERS], indent=1), encoding="utf-8")
