"""Files as every stage writes them: all or nothing (a directory appears only when complete, a text
file is replaced in one rename), content hashes, and links instead of copies. No MLX here."""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import UserError


def ensure_absent(dst: Path) -> None:
    if dst.exists():
        raise UserError(f"destination already exists: {dst}")


def package_version() -> str:
    try:
        return version("funasr-nano-mlx")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+source"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file via PATH.tmp and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


@contextmanager
def staged_output(dst: Path):
    """Yield DST.tmp; rename it to DST only if the body completes, remove it otherwise."""
    ensure_absent(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (no second copy of a 2 GB checkpoint from the hub cache) or copy across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.hardlink_to(src.resolve())
    except OSError:
        shutil.copy2(src, dst)


def read_json_object(path: Path) -> dict:
    """A JSON object from a file; {} when the file is missing, unreadable or holds anything else (the
    caller says in one line what it expected there)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
