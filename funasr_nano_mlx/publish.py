"""Publish a carded, evaluated model directory to the Hugging Face Hub, and verify what arrived.

Refused before any upload when the directory does not load; when its eval.json is missing, older
than the model files or from another model; when its README.md is not the card as it renders now for
this repo (edited by hand, or stale); or when a figure is outside the recipe's acceptance bound. One
`upload_folder` commit (none when nothing changed, as huggingface_hub skips empty commits); then the
repo at that commit is downloaded into a temporary directory, compared file by file (SHA-256) with the
local one, loaded and run on one clip. The token comes from huggingface_hub's usual places (HF_TOKEN,
the login cache); it is never shown.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import click

from .card import (
    EVAL_JSON_NAME,
    check_acceptance,
    check_card,
    check_report,
    recipe_block,
)
from .errors import UserError
from .files import package_version, sha256
from .hub import check_repo_id, hub_errors
from .modeldir import ModelDir

IGNORED = [".cache/**", "*.tmp", ".DS_Store"]
REMOTE_ONLY = {".gitattributes"}  # create_repo writes it; not ours to compare
VERIFY_SECONDS, VERIFY_TOKENS = 1.0, 4


def local_files(folder: Path) -> dict[str, Path]:
    """The files to upload by repo path (what upload_folder sends with IGNORED ignored)."""
    import fnmatch

    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return {k: p for k, p in files.items() if not any(fnmatch.fnmatch(k, pat) for pat in IGNORED)}


def commit_message(model: ModelDir) -> str:
    recipe = model.recipe or {}
    source = model.conversion.get("source", "unknown source")  # SOURCE@COMMIT for a hub source
    name = f"recipe {recipe['name']}" if recipe.get("name") else "no recipe (converted only)"
    return f"Upload {name} from {source} with funasr-nano-mlx {package_version()}"


@dataclass(frozen=True)
class Published:
    repo: str
    commit: str
    url: str
    private: bool
    files: dict[str, str]  # repo path -> SHA-256, as verified after the upload

    def record(self) -> dict:
        """What the publish stage of `run` keeps (no token, nothing secret)."""
        return {"repo": self.repo, "commit": self.commit, "url": self.url, "private": self.private, "files": self.files}


def check(model_dir: Path, repo_id: str | None = None, recipe=None) -> ModelDir:
    """Everything that must hold before anything is sent to `repo_id`; returns the model directory read."""
    from .transcribe import load

    if not model_dir.is_dir():
        raise UserError(f"model directory not found: {model_dir}")
    model = ModelDir.read(model_dir)
    load(model_dir)  # a UserError if it does not load
    report = check_report(model, model_dir / EVAL_JSON_NAME)
    check_acceptance(recipe_block(model.config, recipe), report)
    check_card(model, recipe, repo_id)
    return model


def verify(repo_id: str, commit: str, files: dict[str, Path]) -> None:
    """Download the repo at `commit`, compare every file's SHA-256 with the local one, load it and
    transcribe one second of synthetic audio."""
    import numpy as np
    from huggingface_hub import snapshot_download

    from .audio import SAMPLE_RATE
    from .transcribe import load, transcribe

    with tempfile.TemporaryDirectory(prefix="funasr-nano-mlx-verify-") as tmp:
        # The upload is committed by now: a re-run finds nothing to upload and verifies again.
        with hub_errors(f"download {repo_id}@{commit} to verify it"):
            snapshot_download(repo_id, revision=commit, local_dir=tmp)
        remote = {k: p for k, p in local_files(Path(tmp)).items() if k not in REMOTE_ONLY}
        missing, extra = sorted(files.keys() - remote.keys()), sorted(remote.keys() - files.keys())
        if missing or extra:
            raise UserError(
                f"verification failed: {repo_id}@{commit} "
                + "; ".join(
                    part
                    for part in (
                        f"lacks {', '.join(missing)}" if missing else "",
                        f"has files not published from here: {', '.join(extra)}" if extra else "",
                    )
                    if part
                )
            )
        changed = sorted(k for k, p in files.items() if sha256(p) != sha256(remote[k]))
        if changed:
            raise UserError(
                f"verification failed: {repo_id}@{commit} serves different bytes (SHA-256) for {', '.join(changed)}"
            )
        model, tokenizer = load(tmp)
        t = np.arange(int(VERIFY_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
        audio = 0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size)
        transcribe(model, tokenizer, audio.astype(np.float32), max_new_tokens=VERIFY_TOKENS)


def publish(
    model_dir, repo_id: str, private: bool = False, dry_run: bool = False, echo=click.echo, recipe=None
) -> Published | None:
    """Upload `model_dir` to `repo_id` and verify it; returns what was published (None for a dry run).
    `recipe` (a name, file or Recipe) is the one the card was written with, for a model whose
    config.json names none."""
    model_dir = Path(model_dir)
    check_repo_id(repo_id, "--repo")
    model = check(model_dir, repo_id, recipe)
    files = local_files(model_dir)
    message = commit_message(model)
    if dry_run:
        for name, path in files.items():
            echo(f"{path.stat().st_size:>14,d}  {name}")
        total = sum(p.stat().st_size for p in files.values())
        echo(
            f"dry run: would upload {len(files)} files ({total:,d} bytes) to {repo_id}"
            f"{' (private)' if private else ''} with message: {message}"
        )
        return None

    from huggingface_hub import HfApi

    api = HfApi()
    # One commit or none: a failed upload leaves the repo as it was. LFS files the hub already holds
    # are not sent again (upload_folder asks first), so a re-run resumes.
    with hub_errors(f"upload to {repo_id}"):
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=model_dir, commit_message=message, ignore_patterns=IGNORED
        )
    commit = info.oid
    verify(repo_id, commit, files)
    echo(f"verified {len(files)} files of {repo_id}@{commit}")
    return Published(repo_id, commit, info.commit_url, private, {name: sha256(path) for name, path in files.items()})
