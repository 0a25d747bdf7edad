"""Hugging Face Hub access: a model directory by local path or by repo id (downloaded through
huggingface_hub's cache, so a second use downloads nothing and HF_HUB_OFFLINE=1 works once cached),
what a valid repo id is, and `hub_errors`, the one place where a hub failure becomes one line.

No MLX here: the CLI resolves names before any model is loaded.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError
from .files import read_json_object

# What the hub accepts as ORG/NAME, written out from huggingface_hub/utils/_validators.py:28-33 and
# :132-149 (each part 1-96 characters of letters, digits, `-`, `_`, `.`, not starting or ending with
# `-` or `.`; no `--` or `..`; no `.git` ending). Not imported from there: its rule also admits a bare
# NAME and non-ASCII letters (its regex uses \w; the hub refuses them), and it would load httpx into
# every recipe read.
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"(?!.*(?:--|\.\.))(?!.*\.git$){_REPO_PART}/{_REPO_PART}")
# What is meant as a repo id rather than a path (when no such path exists); REPO_ID then says whether
# the hub would take it, so that `org/na--me` is refused as a repo id, not reported as a missing file.
_LOOKS_LIKE_REPO_ID = re.compile(r"[^/\\\s]+/[^/\\\s]+")
COMMIT = re.compile(r"[0-9a-f]{40}")  # a pinned revision; branch and tag names move
CONFIG_FILE = "config.json"

# huggingface_hub retries 408/429/5xx answers and network errors 5 times, waiting 1, 2, 4, 8, 8 s
# (huggingface_hub/utils/_http.py:459-559), and offers no setting for it: this variable sets how often.
RETRIES_VARIABLE = "FUNASR_NANO_MLX_HUB_RETRIES"
DEFAULT_RETRIES = 5  # huggingface_hub's own
# huggingface_hub sends API calls and uploads without any timeout (its client has timeout=None,
# huggingface_hub/utils/_http.py:331-339), so a hub that accepts and never answers would hang a
# publish for ever; every request waits at most this long for any one connect, read or write.
TIMEOUT_VARIABLE = "FUNASR_NANO_MLX_HUB_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 60.0  # not below any timeout huggingface_hub sets itself (10 s, 60 s)
RESUMES = "a re-run resumes"


def is_repo_id(name: str | Path) -> bool:
    """ORG/NAME that is not an existing local path (a local directory always wins). Whether the hub
    would take it is `check_repo_id`'s question."""
    text = str(name)
    return _LOOKS_LIKE_REPO_ID.fullmatch(text) is not None and not text.startswith(".") and not Path(text).exists()


def repo_id_problem(repo_id: str) -> str | None:
    """Why the hub would refuse `repo_id` as ORG/NAME (None: it would not)."""
    if REPO_ID.fullmatch(repo_id):
        return None
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        return "expected ORG/NAME"
    if any(len(part) > 96 for part in parts):
        return "a hub repo id's ORG and NAME are at most 96 characters each"
    if "--" in repo_id or ".." in repo_id:
        return "a hub repo id may not contain '--' or '..'"
    if repo_id.endswith(".git"):
        return "a hub repo id may not end in .git"
    return "a hub repo id has only ASCII letters, digits, '-', '_' and '.' (not '-' or '.' first or last)"


def check_repo_id(repo_id: str, label: str | None = None) -> str:
    """`repo_id` itself, or a UserError (naming the option `label`) before anything is sent."""
    problem = repo_id_problem(repo_id)
    if problem:
        raise UserError(f"{label + ' ' if label else ''}{repo_id!r}: {problem}")
    return repo_id


def one_line(err: Exception) -> str:
    return " ".join(str(err).split())  # huggingface_hub's messages span lines; our errors are one line


def _timeout_seconds() -> float:
    return _number(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_SECONDS, zero_ok=False)


def _number(variable: str, default: float, zero_ok: bool = True) -> float:
    """The finite number in environment `variable` (`default` when unset)."""
    text = os.environ.get(variable)
    try:
        value = default if text is None else float(text)
    except ValueError:
        value = math.nan
    if not (0 <= value < math.inf and (zero_ok or value > 0)):  # NaN fails every comparison
        raise UserError(f"{variable}={text!r}: expected a number {'of 0 or more' if zero_ok else 'above 0'}")
    return value


def _bound_timeouts(request) -> None:
    """An httpx request hook: no connect, read or write waits longer than the timeout (see
    TIMEOUT_VARIABLE); httpx takes a request's timeouts from its "timeout" extension."""
    limit = _timeout_seconds()
    timeouts = request.extensions.get("timeout") or dict.fromkeys(("connect", "read", "write", "pool"))
    request.extensions["timeout"] = {k: limit if v is None else min(v, limit) for k, v in timeouts.items()}


def _configure_clients() -> None:
    """Bound huggingface_hub's (and, once imported, `datasets`') waiting and retrying; idempotent.
    Called on entering every hub operation, because huggingface_hub replaces its shared client after
    a connection error (huggingface_hub/utils/_http.py:540-543)."""
    from huggingface_hub.utils import get_session, http_backoff, http_stream_backoff

    session = get_session()
    hooks = session.event_hooks
    if _bound_timeouts not in hooks["request"]:
        session.event_hooks = {**hooks, "request": [*hooks["request"], _bound_timeouts]}
    retries = int(_number(RETRIES_VARIABLE, DEFAULT_RETRIES))
    # The keyword defaults that every caller in huggingface_hub relies on (none passes max_retries);
    # http_stream_backoff is a contextmanager, whose function is __wrapped__.
    # If a later huggingface_hub 1.x renames the keyword, its own default stays: fewer bounds, no crash.
    for function in (http_backoff, http_stream_backoff):
        defaults = getattr(function, "__wrapped__", function).__kwdefaults__ or {}
        if "max_retries" in defaults:
            defaults["max_retries"] = retries
    config = sys.modules.get("datasets.config")
    if config is not None:
        # `datasets` retries a streamed file again, 20 times 5 to 60 s apart (datasets/config.py:256-261,
        # datasets/utils/file_utils.py:830-870 and 960-990), around requests that huggingface_hub has
        # retried already: 20 minutes for one rate-limited read. One attempt is enough at that level.
        config.STREAMING_READ_MAX_RETRIES = config.STREAMING_OPEN_MAX_RETRIES = 1
        config.STREAMING_READ_RETRY_INTERVAL = config.STREAMING_OPEN_RETRY_INTERVAL = 0
        config.STREAMING_READ_SERVER_UNAVAILABLE_RETRY_INTERVAL = config.STREAMING_READ_RATE_LIMIT_RETRY_INTERVAL = 0


class _RetryLog(logging.Filter):
    """Keeps huggingface_hub's, datasets' and the ModelScope client's retry warnings (two or three lines
    per attempt per file: 99 lines for one failing download of a model) off stderr, and says once that it
    is retrying. The ModelScope client's last word on a failed file (a dump of the request and the
    response) is dropped too: the UserError that follows names the file."""

    RETRYING = re.compile(
        r"thrown while requesting|Retrying in|Rate limited|Retrying\.\.|disconnected from remote"
        r"|retry in \d|retrying in \d"  # modelscope_hub/_legacy_api.py:874, _download.py:367-373
    )
    GIVEN_UP = re.compile(r"^Failed to download ")  # modelscope_hub/_download.py:1295, retried or not

    def __init__(self):
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.GIVEN_UP.search(record.getMessage()):
            return False
        if not self.RETRYING.search(record.getMessage()):
            return True
        if not self.said:
            self.said = True
            print("the hub did not answer as expected; retrying", file=sys.stderr, flush=True)
        return False


_RETRY_LOGGERS = ("huggingface_hub.utils._http", "huggingface_hub.file_download", "datasets.utils.file_utils")
_MODELSCOPE_RETRY_LOGGERS = ("modelscope_hub.legacy_api", "modelscope_hub.download")


@contextmanager
def _quiet_retries(names: tuple[str, ...] = _RETRY_LOGGERS) -> Iterator[None]:
    quiet = _RetryLog()
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def _causes(err: BaseException) -> Iterator[BaseException]:
    """`err` and what it was raised from or during, outermost first (huggingface_hub wraps a failed LFS
    upload in RuntimeError, huggingface_hub/_commit_api.py:526-530, and a failed download of an
    uncached file in LocalEntryNotFoundError; `datasets` in ConnectionError)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


_UPLOADING = re.compile(r"Error while uploading '(.+)' to the Hub")  # huggingface_hub/_commit_api.py:530
_RESOLVE = re.compile(r"/resolve/[^/]+/(.+)$")


def _file_of(chain: list[BaseException], request) -> str:
    """' (FILE)': the file that was being sent or fetched, when the error says which."""
    for err in chain:
        match = _UPLOADING.search(str(err)) if isinstance(err, RuntimeError) else None
        if match:
            return f" ({match.group(1)})"
    match = _RESOLVE.search(request.url.path) if request is not None else None
    return f" ({match.group(1)})" if match else ""


def _status_advice(status: int) -> str:
    if status == 401:
        return "log in with `hf auth login` or set HF_TOKEN to a valid token"
    if status == 403:
        return "the token lacks the permission (a write token for the namespace to publish; for a gated repo, access granted on its page)"
    if status == 404:
        return "check the repo id and revision (a private repo needs a token that can read it)"
    if status == 429:
        return f"the hub is limiting the rate of requests: wait a few minutes and run again; {RESUMES}"
    if status == 408 or status >= 500:
        return f"try again later; {RESUMES}"
    return "the request was refused"


def hub_failure(err: BaseException) -> str | None:
    """What went wrong with the hub, in `err` or its causes, and what to do about it; None when the
    error is not the hub's (a bug keeps its traceback)."""
    import httpx
    from huggingface_hub.errors import (
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    chain = list(_causes(err))
    for cause in chain:
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            response = cause.response
            status = 404 if isinstance(cause, RepositoryNotFoundError) else response.status_code
            phrase = httpx.codes.get_reason_phrase(status)
            detail = f" ({one_line(cause.server_message)})" if cause.server_message and status < 500 else ""
            where = _file_of(chain, response.request)
            return f"the hub answered {status} {phrase}{where}{detail}: {_status_advice(status)}"
        if isinstance(cause, httpx.TimeoutException):
            where = _file_of(chain, _request_of(cause))
            return f"the hub did not answer within {_timeout_seconds():g} s{where}: try again later; {RESUMES}"
        if isinstance(cause, OfflineModeIsEnabled):
            return "HF_HUB_OFFLINE is set and it is not in the local cache: unset it to download"
        if isinstance(cause, (httpx.NetworkError, httpx.ProtocolError, httpx.ProxyError)):
            from huggingface_hub import constants

            return (
                f"cannot reach the hub at {constants.ENDPOINT} ({one_line(cause)}): check the network "
                f"connection (and HF_ENDPOINT if set); {RESUMES}"
            )
    if isinstance(err, HFValidationError):
        return f"not a valid hub repo id or revision: {one_line(err)}"
    if isinstance(err, LocalEntryNotFoundError):
        return f"it is not in the local cache and cannot be downloaded (offline?): {one_line(err)}"
    if isinstance(err, (httpx.HTTPError, OSError)):
        return one_line(err)  # a file cut short on the wire, a full disk...
    return None


def _request_of(err) -> object | None:
    try:
        return err.request
    except RuntimeError:  # httpx raises when the error carries no request
        return None


@contextmanager
def hub_errors(action: str, subject: str = "") -> Iterator[None]:
    """Run a hub operation: huggingface_hub's retries bounded and kept off stderr (one progress line),
    no request waiting for ever, and any failure of the hub, the network or the local cache raised as
    one UserError line, "[SUBJECT: ]cannot ACTION: what happened: what to do". `action` is e.g.
    "download ORG/NAME@main" or "upload to ORG/NAME"."""
    _configure_clients()
    try:
        with _quiet_retries():
            yield
    except UserError:
        raise
    except Exception as err:
        reason = hub_failure(err)
        if reason is None:
            raise
        raise UserError(f"{subject + ': ' if subject else ''}cannot {action}: {reason}") from None


def download(
    repo_id: str, revision: str | None = None, patterns: list[str] | None = None, local_dir: Path | None = None
) -> Path:
    """snapshot_download of the files matching `patterns` (honours HF_ENDPOINT, HF_HUB_OFFLINE and the
    HF token); any hub or network failure is one UserError line. Files already in the cache are not
    fetched again, and one cut short is resumed, so a re-run after a failure resumes."""
    from huggingface_hub import snapshot_download

    check_repo_id(repo_id)
    with hub_errors(f"download {repo_id}@{revision or 'main'}"):
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
        with _quiet_retries(_MODELSCOPE_RETRY_LOGGERS):
            return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except Exception as err:  # the client raises requests', its own and builtin exception types
        # Its errors say whether trying again may help (modelscope_hub/errors.py, HubError.retryable);
        # the files already fetched stay in its cache, checked by their SHA-256, so a re-run resumes.
        advice = f": try again later; {RESUMES}" if getattr(err, "retryable", False) else ""
        raise UserError(f"cannot download {repo_id}@{revision} from ModelScope: {one_line(err)}{advice}") from None


def remote_file(repo_id: str, filename: str, revision: str | None) -> Path | None:
    """One file of a hub repo at `revision` (None where the repo has no such file), through the hub
    client's cache, so that a later download of the same commit takes it from there; any hub or network
    failure is one UserError line."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    check_repo_id(repo_id)
    with hub_errors(f"download {repo_id}@{revision or 'main'}"):
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision))
        except RemoteEntryNotFoundError:
            return None


def _remote_config(repo_id: str, revision: str | None) -> tuple[dict, str | None]:
    """The repo's config.json alone (one small file), so that a repo of something else is refused
    before its weights are fetched ({} when the repo has none), and the commit it came from."""
    path = remote_file(repo_id, CONFIG_FILE, revision)
    if path is None:
        return {}, None
    # The cache keeps a file under snapshots/COMMIT/ (huggingface_hub/file_download.py, _get_pointer_path).
    return read_json_object(path), path.parent.name if COMMIT.fullmatch(path.parent.name) else None


def model_dir(
    name: str | Path, revision: str | None, patterns: list[str], accepts: Callable[[dict], bool], what: str
) -> Path:
    """`name` itself when it is a local path, else the hub repo `name` at `revision` downloaded with only
    the files `patterns` match. A repo whose config.json `accepts` refuses is named as not being `what`
    before anything else is fetched, so the cache never holds more of it than that config.json. The
    rest comes from the commit that config.json came from: a branch that moves in between cannot mix
    two commits, and a hub that fails is reported as failing. (Given a branch, snapshot_download falls
    back on the branch's cached snapshot when the hub fails, complete or not unless it holds the
    commit's file listing, huggingface_hub/_snapshot_download.py:310-339.) The caller reads the
    directory as it reads any local one (an interrupted download is then refused in one line, and
    completed by the next use that can reach the hub)."""
    if not is_repo_id(name):
        if revision is not None:
            raise UserError(f"a revision ({revision}) applies to a hub repo id, but {name} is a local path")
        return Path(name)
    config, commit = _remote_config(str(name), revision)
    if not accepts(config):
        raise UserError(
            f"{name}@{revision or 'main'} is not {what}: its config.json is missing or names another model type"
        )
    return download(str(name), commit or revision, patterns)
