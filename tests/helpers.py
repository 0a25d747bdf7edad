"""Helpers shared by the test modules: running the command line and checking its user errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(*args, env: dict | None = None, cwd: Path | None = None, command: list[str] | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:  # fmt: skip
    """`funasr-nano-mlx ARGS` in a fresh interpreter (huggingface_hub reads HF_ENDPOINT at import, so a
    test pointing it at a local hub must not import it in the pytest process). `command` replaces
    `python -m funasr_nano_mlx`, e.g. with an installed console script."""
    command = command or [sys.executable, "-m", "funasr_nano_mlx"]
    return subprocess.run([*command, *map(str, args)], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def assert_user_error(done: subprocess.CompletedProcess, fragment: str) -> None:
    """Exit status 2 and one `error:` line, the last on stderr (progress lines may come before it)."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == done.stderr.strip().splitlines()[-1:] and "Traceback" not in done.stderr, done.stderr
    assert fragment in errors[0], errors[0]


def files_of(folder: Path) -> dict[str, Path]:
    """Every file under `folder`, by its relative POSIX path."""
    return {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
