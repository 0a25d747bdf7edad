"""Hugging Face Hub access: a model directory by local path or by repo id (downloaded through
huggingface_hub's cache, so a second use downloads nothing and HF_HUB_OFFLINE=1 works once cached).

No MLX here: the CLI resolves names before any model is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError
from .files import read_json_object

REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
COMMIT = re.compile(r"[0-9a-f]{40}")  # a pinned revision; branch and tag names move
CONFIG_FILE = "config.json"


def is_repo_id(name: str | Path) -> bool:
    """ORG/NAME that is not an existing local path (a local directory always wins)."""
    text = str(name)
    return REPO_ID.fullmatch(text) is not None and not text.startswith(".") and not Path(text).exists()


def one_line(err: Exception) -> str:
    return " ".join(str(err).split())  # huggingface_hub's messages span lines; our errors are one line


@contextmanager
def hub_errors(what: str):
    """huggingface_hub's failures (network, missing repo or file, offline without a cache, an invalid
    repo id) as one UserError line naming `what`, e.g. REPO@REVISION."""
    import httpx
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        yield
    except LocalEntryNotFoundError as err:
        raise UserError(
            f"{what} is not in the local cache and cannot be downloaded (offline?): {one_line(err)}"
        ) from None
    except HFValidationError as err:
        raise UserError(f"{what}: not a valid hub repo id or revision: {one_line(err)}") from None
    except (
        httpx.HTTPError,
        OSError,
    ) as err:  # huggingface_hub's HTTP errors are both; a refused connection only the first
        raise UserError(f"cannot download {what}: {one_line(err)}") from None


def download(
    repo_id: str, revision: str | None = None, patterns: list[str] | None = None, local_dir: Path | None = None
) -> Path:
    """snapshot_download of the files matching `patterns` (honours HF_ENDPOINT, HF_HUB_OFFLINE and the
    HF token); any hub or network failure is one UserError line."""
    from huggingface_hub import snapshot_download

    with hub_errors(f"{repo_id}@{revision or 'main'}"):
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_dir=local_dir))


def download_from_modelscope(repo_id: str, revision: str, patterns: list[str]) -> Path:
    """The files matching `patterns` of a ModelScope model repo, through the `modelscope` client (an
    optional install) into its own cache. Its snapshot folder does not name the commit it resolved."""
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise UserError(
            f"{repo_id} is downloaded from ModelScope: install its client (pip install modelscope), "
            f"or fetch it with `modelscope download --model {repo_id} --local_dir DIR` and pass "
            "--source DIR"
        ) from None
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as err:  # the client raises requests', its own and builtin exception types
        raise UserError(f"cannot download {repo_id}@{revision} from ModelScope: {one_line(err)}") from None


def _remote_config(repo_id: str, revision: str | None) -> dict:
    """The repo's config.json alone (one small file), so that a repo of something else is refused
    before its weights are fetched; {} when the repo has none."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    with hub_errors(f"{repo_id}@{revision or 'main'}"):
        try:
            path = hf_hub_download(repo_id, CONFIG_FILE, revision=revision)
        except RemoteEntryNotFoundError:
            return {}
    return read_json_object(Path(path))


def model_dir(
    name: str | Path, revision: str | None, patterns: list[str], accepts: Callable[[dict], bool], what: str
) -> Path:
    """`name` itself when it is a local path, else the hub repo `name` at `revision` downloaded with only
    the files `patterns` match. A repo whose config.json `accepts` refuses is named as not being `what`
    before anything else is fetched, so the cache never holds more of it than that config.json. The
    caller reads the directory as it reads any local one (an interrupted download is then refused in
    one line, and completed by the next use that can reach the hub)."""
    if not is_repo_id(name):
        if revision is not None:
            raise UserError(f"a revision ({revision}) applies to a hub repo id, but {name} is a local path")
        return Path(name)
    if not accepts(_remote_config(str(name), revision)):
        raise UserError(
            f"{name}@{revision or 'main'} is not {what}: its config.json is missing or names another model type"
        )
    return download(str(name), revision, patterns)
