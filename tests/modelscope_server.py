"""A small fake ModelScope hub for tests: stdlib only, driven by the real `modelscope` client.

Model repositories ("owner/name") with one branch, `master`, read-only over HTTP (tests `seed` them).
What `modelscope.snapshot_download(repo_id, revision=REV, allow_patterns=...)` requests, in modelscope
1.40.2, which hands the work to modelscope_hub 0.5.1 (all of it is served here; paths under the
endpoint; no HEAD, no login, no cookie unless a token is set, modelscope_hub/_legacy_api.py:212-226):

    listing      GET /api/v1/models/{repo}/repo/files?Revision={rev}&Recursive=True
                 one for the whole repo: a pattern naming a file at the top, such as model.pt, leaves
                 no folder to scope it to with Root (modelscope_hub/_download.py:284-296)
                 -> {"Code": 200, "Data": {"Files": [{"Path", "Type": "blob"|"tree", "Size", "Sha256"...}]}}
    region probe GET /api/v1/repos/internalAccelerationInfo  (before the first file it fetches, 0.2 s
                 timeout, modelscope_hub/_download.py:663-701, 832-857: on Alibaba Cloud the answer
                 names a metadata URL that gives the region; here none, so no region header is sent)
    each file    GET /api/v1/models/{repo}/repo?Revision={rev}&FilePath={path}: every listed file that
                 the patterns match and that the cache lacks (by size and SHA-256 against the listing),
                 4 at a time (modelscope/hub/snapshot_download.py:102)

The client takes its endpoint from MODELSCOPE_ENDPOINT, plain http included (modelscope_hub/config.py:
128-149, 164-180), and an endpoint so given is used as is, with no probe of modelscope.cn or
modelscope.ai for the repo (modelscope_hub/api.py:1253-1254). Its cache is MODELSCOPE_CACHE, its
config and credentials (it writes a session id there) MODELSCOPE_HOME; the files land in
{MODELSCOPE_CACHE}/models/{owner}--{name}/snapshots/{rev}/, named by the revision asked for, not by
a commit (modelscope_hub/_download.py:1171-1186). `client_env` sets all of these.

Retries, which tests see as repeated requests: a listing that cannot connect or is answered 429 or
5xx is tried 4 times (modelscope_hub/_legacy_api.py:834-899), a file 6 times (_download.py:1860-1864,
348-375); a 404 is not retried. The waits between them (1, 2, 4 s for a listing; 0, 2, 4, 8, 16 s for
a file) are capped here at 1 s with the client's MODELSCOPE_REPO_TREE_PAGE_RETRY_MAX_DELAY_SECONDS
and MODELSCOPE_DOWNLOAD_RETRY_MAX_DELAY_SECONDS (1 is their least value, constants.py:323-347), so
that a failing download is quick.

A file is answered 200 with the whole of it even to a Range request (the client sends one to resume
a partial file), as the real hub answers a file it serves without a redirect to its CDN; the client
then writes it from the start (modelscope_hub/_download.py:1929-1931).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from tests.hub_server import LocalServer

BRANCH = "master"  # ModelScope's default branch


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]


class ModelScopeServer(LocalServer):
    """The fake ModelScope hub, on 127.0.0.1 in a background thread; everything lives in memory."""

    def __init__(self):
        self.repos: dict[str, list[Commit]] = {}  # repo id -> its commits on master, oldest first
        self.requests: list[str] = []  # "METHOD /path?query" of every request, in arrival order
        self._failures: list[list] = []  # [path pattern, status, remaining count]
        self._lock = threading.Lock()

    def client_env(self, home: Path) -> dict[str, str]:
        return client_env(self.url, home)

    # -- helpers for tests (server side, no HTTP) ---------------------------------------------
    def seed(self, repo_id: str, files: dict[str, bytes | Path]) -> str:
        """Commit `files` (the whole tree) as the new head of `master` of `repo_id`; return its sha."""
        tree = {path: data.read_bytes() if isinstance(data, Path) else data for path, data in files.items()}
        sha = hashlib.sha1(os.urandom(20)).hexdigest()
        with self._lock:
            self.repos.setdefault(repo_id, []).append(Commit(sha, tree))
        return sha

    def fetched(self) -> list[str]:
        """The FilePath of every file request so far, in arrival order (a retry repeats it)."""
        return [parse_qs(urlsplit(r.split(" ", 1)[1]).query)["FilePath"][0] for r in self.requests if "/repo?" in r]

    def fail_next(self, path_pattern: str, status: int = 500, count: int = 1) -> None:
        """Answer the next `count` requests whose path (query included, as sent) matches the regular
        expression `path_pattern` (searched) with `status`."""
        with self._lock:
            self._failures.append([re.compile(path_pattern), status, count])

    def _injected_failure(self, path: str) -> int | None:
        with self._lock:
            for rule in self._failures:
                if rule[0].search(path):
                    rule[2] -= 1
                    if rule[2] == 0:
                        self._failures.remove(rule)
                    return rule[1]
        return None

    def _commit(self, repo_id: str, revision: str) -> Commit:
        commits = self.repos.get(repo_id)
        if not commits:
            raise _Answer(404, f"model {repo_id} does not exist")
        commit = commits[-1] if revision == BRANCH else next((c for c in commits if c.sha == revision), None)
        if commit is None:
            raise _Answer(404, f"revision {revision} of {repo_id} does not exist")
        return commit

    # -- endpoints (see ROUTES): (query, **route groups) -> (status, JSON "Data" or bytes)
    def api_acceleration_info(self, query):
        return 200, {"InternalRegionQueryAddress": ""}  # not on Alibaba Cloud: no region to ask for

    def api_files(self, query, repo):
        """Every file and folder of the commit (the client skips the folders), as the whole-repo
        recursive listing answers; a listing scoped by Root is not what these tests expect."""
        if query.get("Recursive") != "True" or "Root" in query:
            raise _Answer(400, "this fake lists a whole repo recursively only")
        commit = self._commit(repo, query.get("Revision", BRANCH))
        folders = {"/".join(p.split("/")[:depth]) for p in commit.files for depth in range(1, p.count("/") + 1)}
        entries = [_entry(path, "tree", 0, "", commit.sha) for path in sorted(folders)]
        for path, data in sorted(commit.files.items()):
            entries.append(_entry(path, "blob", len(data), hashlib.sha256(data).hexdigest(), commit.sha))
        return 200, {"Files": entries}

    def api_file(self, query, repo):
        commit = self._commit(repo, query.get("Revision", BRANCH))
        path = query.get("FilePath", "")
        if path not in commit.files:
            raise _Answer(404, f"file {path} does not exist in {repo}@{commit.sha}")
        return 200, commit.files[path]


def client_env(endpoint: str, home: Path) -> dict[str, str]:
    """os.environ for a subprocess whose modelscope client talks to `endpoint` only: every MODELSCOPE_*
    variable is dropped (no real token), cache and config live in `home`. The client reads these when
    it first builds its configuration, so they are set before it runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSCOPE_")}
    env.update(
        MODELSCOPE_ENDPOINT=endpoint,
        MODELSCOPE_CACHE=str(home / "cache"),
        MODELSCOPE_HOME=str(home / "config"),
        MODELSCOPE_REPO_TREE_PAGE_RETRY_MAX_DELAY_SECONDS="1",
        MODELSCOPE_DOWNLOAD_RETRY_MAX_DELAY_SECONDS="1",
    )
    return env


def _entry(path: str, kind: str, size: int, sha256: str, commit: str) -> dict:
    """A listing entry with the fields of the real one that the client reads (Path, Type, Size, Sha256)."""
    return {
        "Name": path.rsplit("/", 1)[-1],
        "Path": path,
        "Type": kind,
        "Size": size,
        "Sha256": sha256,
        "Revision": commit,
    }


class _Answer(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


_REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [  # (regex on the still-quoted URL path, ModelScopeServer endpoint method); all GET
    (r"/api/v1/repos/internalAccelerationInfo", "api_acceleration_info"),
    (rf"/api/v1/models/{_REPO}/repo/files", "api_files"),
    (rf"/api/v1/models/{_REPO}/repo", "api_file"),
]


class _Handler(BaseHTTPRequestHandler):
    """Routes each request to a ModelScopeServer endpoint and writes its answer (HTTP/1.1 keep-alive)
    in the hub's envelope: {"Code", "Data", "Message", "RequestId", "Success"}, or the file's bytes."""

    protocol_version = "HTTP/1.1"
    hub: ModelScopeServer

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))  # none expected; keeps the connection in step
        hub, split = self.hub, urlsplit(self.path)
        with hub._lock:
            hub.requests.append(f"{self.command} {self.path}")
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        try:
            status = hub._injected_failure(self.path)
            if status is not None:
                raise _Answer(status, f"Injected failure (fail_next) for {self.command} {split.path}")
            for pattern, name in ROUTES:
                match = re.fullmatch(pattern, split.path)
                if match and self.command == "GET":  # the client only reads here
                    groups = {k: unquote(v) for k, v in match.groupdict().items()}
                    return self._send(*getattr(hub, name)(query, **groups))
            raise _Answer(404, f"no such endpoint: {self.command} {split.path}")
        except _Answer as e:
            body = {"Code": e.status, "Message": str(e), "RequestId": "fake", "Success": False}
            self._send(e.status, body, envelope=False)

    do_HEAD = do_POST = do_PUT = do_GET

    def _send(self, status: int, payload, envelope: bool = True) -> None:
        if isinstance(payload, bytes):
            data, kind = payload, "application/octet-stream"
        else:
            if envelope:
                payload = {"Code": 200, "Data": payload, "Message": "success", "RequestId": "fake", "Success": True}
            data, kind = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


ModelScopeServer.handler = _Handler  # defined after the class it serves
