"""Publish a carded, evaluated model directory to the Hugging Face Hub, and verify what arrived.

Refused before any upload when the directory does not load, has no card, or its eval.json is missing,
older than the model files or from another model. One `upload_folder` commit (none when nothing
changed, as huggingface_hub skips empty commits); then the repo at that commit is downloaded into a
temporary directory, compared file by file (SHA-256) with the local one, loaded and run on one clip.
The token comes from huggingface_hub's usual places (HF_TOKEN, the login cache); it is never shown.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from .card import CARD, EVAL_JSON_NAME, check_report
from .convert import sha256
from .errors import UserError

IGNORED = [".cache/**", "*.tmp", ".DS_Store"]
REMOTE_ONLY = {".gitattributes"}  # create_repo writes it; not ours to compare
VERIFY_SECONDS, VERIFY_TOKENS = 1.0, 4


def local_files(folder: Path) -> dict[str, Path]:
    """The files to upload by repo path (what upload_folder sends with IGNORED ignored)."""
    import fnmatch

    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return {k: p for k, p in files.items() if not any(fnmatch.fnmatch(k, pat) for pat in IGNORED)}


def commit_message(model_dir: Path) -> str:
    from .convert import package_version
    from .transcribe import read_config

    config = read_config(model_dir)
    recipe = config.get("recipe") or {}
    source = config.get("conversion", {}).get("source", "unknown source")
    if recipe.get("source") and recipe.get("revision"):
        source = f"{recipe['source']}@{recipe['revision']}"
    name = f"recipe {recipe['name']}" if recipe.get("name") else "no recipe (converted only)"
    return f"Upload {name} from {source} with funasr-nano-mlx {package_version()}"


def check(model_dir: Path) -> None:
    """Everything that must hold before anything is sent."""
    from .transcribe import load

    if not model_dir.is_dir():
        raise UserError(f"model directory not found: {model_dir}")
    load(model_dir)  # a UserError if it does not load
    check_report(model_dir, model_dir / EVAL_JSON_NAME)
    if not (model_dir / CARD).is_file():
        raise UserError(f"{model_dir} has no {CARD}: write the card first (funasr-nano-mlx card {model_dir} --eval REPORT)")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def verify(repo_id: str, commit: str, files: dict[str, Path]) -> None:
    """Download the repo at `commit`, compare every file's SHA-256 with the local one, load it and
    transcribe one second of synthetic audio."""
    import numpy as np
    from huggingface_hub import snapshot_download

    from .audio import SAMPLE_RATE
    from .transcribe import load, transcribe

    with tempfile.TemporaryDirectory(prefix="funasr-nano-mlx-verify-") as tmp:
        snapshot_download(repo_id, revision=commit, local_dir=tmp)
        remote = {k: p for k, p in local_files(Path(tmp)).items() if k not in REMOTE_ONLY}
        missing, extra = sorted(files.keys() - remote.keys()), sorted(remote.keys() - files.keys())
        if missing or extra:
            raise UserError(f"verification failed: {repo_id}@{commit} " + "; ".join(
                part for part in (f"lacks {', '.join(missing)}" if missing else "",
                                  f"has files not published from here: {', '.join(extra)}" if extra else "") if part))
        changed = sorted(k for k, p in files.items() if sha256(p) != sha256(remote[k]))
        if changed:
            raise UserError(f"verification failed: {repo_id}@{commit} serves different bytes (SHA-256) for "
                            f"{', '.join(changed)}")  # fmt: skip
        model, tokenizer = load(tmp)
        t = np.arange(int(VERIFY_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
        audio = (0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size))
        transcribe(model, tokenizer, audio.astype(np.float32), max_new_tokens=VERIFY_TOKENS)


def publish(model_dir, repo_id: str, private: bool = False, dry_run: bool = False, echo=click.echo) -> str | None:
    """Upload `model_dir` to `repo_id` and verify it; returns the commit URL (None for a dry run)."""
    from .recipe import REPO_ID

    model_dir = Path(model_dir)
    if not REPO_ID.fullmatch(repo_id):
        raise UserError(f"--repo {repo_id!r}: expected ORG/NAME")
    check(model_dir)
    files = local_files(model_dir)
    message = commit_message(model_dir)
    if dry_run:
        for name, path in files.items():
            echo(f"{path.stat().st_size:>14,d}  {name}")
        total = sum(p.stat().st_size for p in files.values())
        echo(f"dry run: would upload {len(files)} files ({total:,d} bytes) to {repo_id}"
             f"{' (private)' if private else ''} with message: {message}")  # fmt: skip
        return None

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=model_dir, commit_message=message,
                                 ignore_patterns=IGNORED)  # fmt: skip
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise UserError(f"upload to {repo_id} failed: {_one_line(err)} (nothing is half-committed: run publish again)") from None
    commit = info.oid
    try:
        verify(repo_id, commit, files)
    except (HfHubHTTPError, OSError) as err:
        raise UserError(f"verification failed: cannot download {repo_id}@{commit}: {_one_line(err)}") from None
    echo(f"verified {len(files)} files of {repo_id}@{commit}")
    return info.commit_url
