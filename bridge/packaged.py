"""The files the wheel carries (``bridge/data``) and installing the plugin into a WordPress root."""

from __future__ import annotations

import os
import tempfile
from importlib import resources
from pathlib import Path

from bridge.errors import BridgeError

PLUGIN = "wp-sync-bridge.php"
FILES = {"plugin": PLUGIN, "config": "config.example.toml", "unit": "wp-sync-bridge.service"}


class NotWordPress(BridgeError):
    """The path given is not the root of a WordPress installation."""


def data_text(name: str) -> str:
    """The text of a packaged file: ``plugin``, ``config`` or ``unit``."""
    return resources.files("bridge.data").joinpath(FILES[name]).read_text(encoding="utf-8")


def is_wordpress_root(root: Path) -> bool:
    """True when ``root`` holds wp-load.php, wp-includes/version.php and a wp-content directory."""
    return (root / "wp-load.php").is_file() and (root / "wp-includes" / "version.php").is_file() \
        and (root / "wp-content").is_dir()


def install_plugin(root: Path) -> tuple[Path, bool]:
    """Copy the plugin to ROOT/wp-content/mu-plugins/ (created if needed) atomically:
    (installed path, whether it replaced a file). Raises NotWordPress, OSError."""
    root = Path(root)
    if not is_wordpress_root(root):
        raise NotWordPress(f"{root} is not a WordPress root (no wp-load.php, wp-includes/version.php and "
                           "wp-content/ there): give the directory that holds wp-config.php")
    target_dir = root / "wp-content" / "mu-plugins"
    target_dir.mkdir(mode=0o755, exist_ok=True)
    target = target_dir / PLUGIN
    replaced = target.exists()
    fd, tmp = tempfile.mkstemp(dir=target_dir, prefix=".wp-sync-bridge.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(data_text("plugin"))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target, replaced
