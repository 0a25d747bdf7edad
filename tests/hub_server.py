"""A small fake Hugging Face Hub for tests: stdlib only, driven by the real `huggingface_hub` client.

Model repositories ("namespace/name") and their branch `main`, and dataset repositories that tests
create with `seed(..., repo_type="dataset")` (read-only over HTTP). What huggingface_hub 1.33 requests
for each call (all of it is served here):

    create_repo          POST /api/repos/create                  (409 + {"url"} when it exists)
    whoami               GET  /api/whoami-v2                     (any token is valid)
    model_info/repo_info GET  /api/models/{repo}[/revision/{rev}]  (?blobs=true: sizes, blob ids, LFS)
    list_repo_files      GET  /api/models/{repo}/tree/{rev}?recursive=true
    list_repo_commits    GET  /api/models/{repo}/commits/{rev}
    hf_hub_download      HEAD then GET /{repo}/resolve/{rev}/{path}
    snapshot_download    model_info (skipped when rev is a 40-hex sha), tree at that sha, then
                         hf_hub_download of each file that matches allow_patterns
    upload_folder        POST /api/validate-yaml (twice, only if README.md is uploaded)
                         POST /api/models/{repo}/preupload/{rev}  -> "regular"/"lfs" + remote oid
                         POST /{repo}.git/info/lfs/objects/batch  (if any LFS file; "basic" transfer)
                         PUT  /lfs-upload/{sha256}                (only objects the server lacks)
                         POST /api/models/{repo}/commit/{rev}     (ndjson; regular files in base64)
                         or, when nothing changed: GET /api/models/{repo}/revision/{rev} instead
    get_paths_info       POST /api/{models,datasets}/{repo}/paths-info/{rev}  (form: paths=...&expand=)

What `datasets` 5.2 requests to stream a dataset repo (the /api/ read endpoints above serve datasets too):

    load_dataset(repo, config, revision=sha, streaming=True)
                         HEAD+GET /datasets/{repo}/resolve/{sha}/README.md  (its YAML `configs`)
                         HEAD .../{name}.py, .../.huggingface.yaml, .../dataset_infos.json (404 here)
                         GET  /api/datasets/{repo}/revision/{sha}, tree/{sha}[/{folder}]?recursive=...
                         GET  /datasets/{repo}/resolve/{sha}/{file}  with Range: bytes=a-b (parquet
                              footer, then row groups): answered 206 with Content-Range
    load_dataset("parquet", data_files="hf://datasets/{repo}@{sha}/{path}", streaming=True)
                         GET /api/datasets/{repo}/revision/{sha}, tree/{sha}/{folder}, then resolve

A commit may be given its id (`seed(..., sha=...)`), so a repo can stand under the very commit a set
definition pins, and an LFS file may declare another file's SHA-256 (`seed(..., declared=...)`): see
`seed`, and tests/hub_datasets.py for the shipped evaluation sets' repos.

Wiring: huggingface_hub reads HF_ENDPOINT, HF_HUB_DISABLE_XET, HF_HOME... once, at import, and binds
its module-level functions (`huggingface_hub.upload_folder`...) to an `HfApi` built then. So never
call it in the pytest process; run it in a fresh interpreter with this server's environment:

    with HubServer() as hub:
        subprocess.run([sys.executable, ...], env=hub.client_env(tmp_path / "hf-home"), check=True)

(tests/test_hub_server.py's `client_for` does so for any huggingface_hub function). The variable
HF_HUB_DISABLE_XET=1 is essential: with hf_xet installed, LFS files would otherwise be sent to a Xet
storage service, which this fake does not implement.

Unchanged re-upload: the client drops every file whose preupload "oid" (git blob sha1, or sha256
for LFS) equals its own and makes no commit when nothing is left. Like the real Hub, the server
itself would record a commit that changes nothing; the client just never sends one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

USER = "tester"
TOKEN = "hf_fake_test_token"
# Suffixes the Hub's default .gitattributes stores with LFS; binary or >= 10 MiB files go to LFS too.
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".npy",
    ".npz",
    ".onnx",
    ".gguf",
    ".h5",
    ".msgpack",
    ".pkl",
    ".model",
    ".zip",
    ".tar",
    ".gz",
    ".wav",
    ".flac",
    ".mp3",
)
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()


def is_lfs(path: str, size: int, sample: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= 10 * 2**20 or b"\0" in sample


class HubError(Exception):
    """An error answer; `code` goes to the X-Error-Code header that huggingface_hub maps to
    RepositoryNotFoundError ("RepoNotFound"), RevisionNotFoundError, EntryNotFoundError..."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


@dataclass(frozen=True)
class Entry:
    """A file in a commit. `oid` is its git blob id (for LFS files, that of the pointer file)."""

    sha256: str
    size: int
    oid: str
    pointer_size: int | None  # None for a regular (non-LFS) file
    content: str = ""  # sha256 of the bytes served, when they are a stand-in (see `seed`'s `declared`)

    @classmethod
    def of(cls, data: bytes, lfs: bool, declared_sha256: str | None = None) -> Entry:
        sha256 = hashlib.sha256(data).hexdigest()
        if declared_sha256 is not None:
            assert lfs, "only an LFS pointer can declare another file's SHA-256"
            sha256, content = declared_sha256, sha256
        else:
            content = sha256
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(data)}\n"
        blob = pointer.encode() if lfs else data
        oid = hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()
        return cls(sha256, len(data), oid, len(blob) if lfs else None, content)

    @property
    def etag(self) -> str:
        """What the client compares its local copy with: resolve's ETag and preupload's "oid"."""
        return self.oid if self.pointer_size is None else self.sha256

    def metadata(self, lfs_key: str) -> dict:
        """Size, blob id and LFS info, as the tree (lfs_key "oid") or model_info ("sha256") lists them."""
        meta: dict[str, Any] = {"size": self.size, "oid": self.oid}
        if self.pointer_size is not None:
            meta["lfs"] = {lfs_key: self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return meta


@dataclass
class Commit:
    sha: str
    title: str
    date: str
    tree: dict[str, Entry]


@dataclass
class Repo:
    private: bool
    commits: list[Commit] = field(default_factory=list)  # oldest first; the last one is `main`
    tampered: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (path, sha256) -> bytes


class LocalServer:
    """A fake hub's HTTP side: its `handler` class (a BaseHTTPRequestHandler that reads `self.hub`) served on
    127.0.0.1 in a background thread, started and stopped with `with`."""

    handler: type[BaseHTTPRequestHandler]
    _httpd: ThreadingHTTPServer | None = None

    def start(self):
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (self.handler,), {"hub": self}))
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()  # quick stop()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "call start() first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"


class HubServer(LocalServer):
    """The fake Hub, on 127.0.0.1 in a background thread. File contents are kept by sha256 in memory,
    or as files under `root` when given; repositories and commits always live in memory."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else None
        self.repos: dict[str, Repo] = {}  # model repositories
        self.datasets: dict[str, Repo] = {}  # dataset repositories (read-only over HTTP: see `seed`)
        self.requests: list[str] = []  # "METHOD /path?query" of every request, in arrival order
        self._blobs: dict[str, bytes] = {}
        self._failures: list[list] = []  # [method, path pattern, status, remaining count]
        self._lock = threading.RLock()

    def client_env(self, home: Path, token: str | None = TOKEN) -> dict[str, str]:
        """os.environ for a subprocess whose huggingface_hub talks to this server only: every HF_*
        variable is dropped (no HF_HUB_OFFLINE, no real token), cache and token file live in `home`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(
            HF_ENDPOINT=self.url,
            HF_HOME=str(home),
            HF_HUB_DISABLE_XET="1",
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
        )
        if token:
            env["HF_TOKEN"] = token
        return env

    # -- helpers for tests (server side, no HTTP) ---------------------------------------------
    def seed(
        self,
        repo_id: str,
        files: dict[str, bytes | Path],
        message: str = "init",
        *,
        repo_type: str = "model",
        sha: str | None = None,
        declared: dict[str, str] | None = None,
    ) -> str:
        """Commit `files` on top of `main` of `repo_id` (created public and empty if missing, without
        the .gitattributes commit that create_repo makes); return the new commit's sha.

        repo_type "dataset" makes a dataset repo (served under /api/datasets/ and /datasets/; only
        `seed` writes to them). `sha`: the commit's id, e.g. a real upstream commit a definition pins.
        `declared`: path -> the SHA-256 that the hub's records (tree, paths-info, LFS pointer, ETag)
        give for an LFS file whose bytes here are a stand-in. A real evaluation file is hundreds of MB
        and cannot be rebuilt from its hash; tests serve a few synthetic rows under the real file's
        declared hash, as the real hub would describe it. Its size stays that of the served bytes:
        parquet readers seek from the end of the file by the size the hub reports."""
        declared = declared or {}
        with self._lock:
            repo = self._repos(repo_type).setdefault(repo_id, Repo(private=False))
            tree = dict(repo.commits[-1].tree) if repo.commits else {}
            for path, data in files.items():
                data = data.read_bytes() if isinstance(data, Path) else data
                lfs = is_lfs(path, len(data), data[:512]) or path in declared
                tree[path] = self._store(data, lfs, declared.get(path))
            return self._commit(repo, message, tree, sha)

    def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """The commit shas of `main`, newest first (the order of `list_repo_commits`)."""
        return [c.sha for c in reversed(self._repo(repo_id, repo_type).commits)]

    def files(self, repo_id: str, revision: str | None = None, repo_type: str = "model") -> dict[str, bytes]:
        """The bytes served for each file at `revision` (default `main`), tampering included."""
        repo = self._repo(repo_id, repo_type)
        return {p: self._served(repo, p, e) for p, e in self._resolve(repo, revision or "main").tree.items()}

    def tamper(self, repo_id: str, path: str, data: bytes) -> None:
        """From now on serve `data` for the file at `path` on `main` (at every revision holding the
        same content), with no new commit: ETag, sizes and hashes keep describing the committed file.
        Same-length data passes the client's size check, so only hash verification notices."""
        repo = self._repo(repo_id)
        with self._lock:
            repo.tampered[(path, self._resolve(repo, "main").tree[path].sha256)] = data

    def fail_next(self, method: str, path_pattern: str, status: int = 500, count: int = 1) -> None:
        """Answer the next `count` `method` requests whose path (query included) matches the regular
        expression `path_pattern` (searched, so a plain substring without special characters works) with `status`.
        huggingface_hub retries 408/429/5xx by itself (after 1 s, 2 s...) on preupload, the LFS batch
        and the LFS PUT, not on POST .../commit/..., so fail the commit to make an upload raise at once."""
        with self._lock:
            self._failures.append([method.upper(), re.compile(path_pattern), status, count])

    def clear_failures(self) -> None:
        """Forget every failure still due from `fail_next`: the fault has cleared."""
        with self._lock:
            self._failures.clear()

    # -- storage -------------------------------------------------------------------------------
    def _store(self, data: bytes, lfs: bool, declared_sha256: str | None = None) -> Entry:
        entry = Entry.of(data, lfs, declared_sha256)
        with self._lock:
            if self.root is None:
                self._blobs[entry.content] = data
            elif not (self.root / entry.content).exists():
                self.root.mkdir(parents=True, exist_ok=True)
                (self.root / f"{entry.content}.tmp").write_bytes(data)
                (self.root / f"{entry.content}.tmp").replace(self.root / entry.content)
        return entry

    def _has_blob(self, sha256: str) -> bool:
        return sha256 in self._blobs if self.root is None else (self.root / sha256).exists()

    def _blob(self, sha256: str) -> bytes:
        return self._blobs[sha256] if self.root is None else (self.root / sha256).read_bytes()

    def _served(self, repo: Repo, path: str, entry: Entry) -> bytes:
        tampered = repo.tampered.get((path, entry.sha256))
        return self._blob(entry.content) if tampered is None else tampered

    def _commit(self, repo: Repo, title: str, tree: dict[str, Entry], sha: str | None = None) -> str:
        parent = repo.commits[-1].sha if repo.commits else ""
        listing = "".join(f"{p} {e.oid}\n" for p, e in sorted(tree.items()))
        sha = sha or hashlib.sha1(f"{parent}\n{title}\n{listing}".encode() + os.urandom(16)).hexdigest()
        assert re.fullmatch(r"[0-9a-f]{40}", sha) and sha not in {c.sha for c in repo.commits}, sha
        repo.commits.append(Commit(sha, title, time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), tree))
        return sha

    def _repos(self, repo_type: str) -> dict[str, Repo]:
        """The repos of one type: "model" or "dataset" (or their URL forms "models", "datasets")."""
        return {"model": self.repos, "dataset": self.datasets}[repo_type.removesuffix("s")]

    def _repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        repos = self._repos(repo_type)
        if repo_id not in repos:
            raise HubError(404, "RepoNotFound", f"Repository Not Found for {repo_id}.")
        return repos[repo_id]

    def _readable(self, repo_id: str, token: str | None, repo_type: str = "model") -> Repo:
        """Like the Hub, a private repo is "not found" without a token (here any token may read it)."""
        repo = self._repo(repo_id, repo_type)
        if repo.private and token is None:
            raise HubError(404, "RepoNotFound", f"Repository Not Found for {repo_id}.")
        return repo

    @staticmethod
    def _require_token(token: str | None) -> None:
        """Writes and whoami need a token, any token."""
        if token is None:
            raise HubError(401, None, "Invalid credentials in Authorization header")

    @staticmethod
    def _resolve(repo: Repo, revision: str) -> Commit:
        """The commit that `main` or a full 40-hex sha names."""
        shas = {c.sha: c for c in repo.commits}
        commit = repo.commits[-1] if revision == "main" else shas.get(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _injected_failure(self, method: str, path: str) -> int | None:
        with self._lock:
            for rule in self._failures:
                if rule[0] == method and rule[1].search(path):
                    rule[3] -= 1
                    if rule[3] == 0:
                        self._failures.remove(rule)
                    return rule[2]
        return None

    # -- endpoints (see ROUTES): (token, query, body, **route groups) -> (status, JSON or bytes, headers)
    def api_whoami(self, token, query, body):
        self._require_token(token)
        token_info = {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}
        return 200, {"type": "user", "name": USER, "fullname": "Test User", "orgs": [], "auth": token_info}, {}

    def api_create_repo(self, token, query, body):
        self._require_token(token)
        payload = json.loads(body)
        if payload.get("type", "model") != "model":
            raise HubError(400, None, "this fake hub only has model repositories")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.url}/{repo_id}"
        with self._lock:
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": url}, {}
            repo = self.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
            self._commit(repo, "initial commit", {".gitattributes": self._store(GITATTRIBUTES, False)})
        return 200, {"url": url, "name": repo_id}, {}

    def api_validate_yaml(self, token, query, body):
        return 200, {"errors": [], "warnings": []}, {}

    def api_info(self, token, query, body, repo, kind="models", rev="main"):
        r = self._readable(repo, token, kind)
        commit = self._resolve(r, rev)
        siblings = [{"rfilename": path} for path in sorted(commit.tree)]
        if query.get("blobs") in ("true", "True"):  # files_metadata=True
            for sibling in siblings:
                meta = commit.tree[sibling["rfilename"]].metadata("sha256")
                meta["blobId"] = meta.pop("oid")
                sibling.update(meta)
        return (
            200,
            {
                "_id": repo,
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0],
                "sha": commit.sha,
                "lastModified": commit.date,
                "createdAt": r.commits[0].date,
                "private": r.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            },
            {},
        )

    def api_tree(self, token, query, body, repo, rev, kind="models", path=""):
        commit = self._resolve(self._readable(repo, token, kind), rev)
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = query.get("recursive") in ("true", "True")
        entries: dict[str, dict] = {}
        for p, e in sorted(commit.tree.items()):
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):  # folders on the way
                folder = prefix + "/".join(parts[:depth])
                entries[folder] = {
                    "type": "directory",
                    "path": folder,
                    "size": 0,
                    "oid": hashlib.sha1(folder.encode()).hexdigest(),
                }
            if recursive or len(parts) == 1:
                entries[p] = {"type": "file", "path": p, **e.metadata("oid")}
        if path and not entries:
            raise HubError(404, "EntryNotFound", f"{path} does not exist at {commit.sha}")
        return 200, list(entries.values()), {}

    def api_paths_info(self, token, query, body, repo, rev, kind="models"):
        """The tree entries of the given paths (form fields `paths`, repeated); absent ones are left out."""
        commit = self._resolve(self._readable(repo, token, kind), rev)
        form = parse_qs(body.decode())
        entries = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.tree:
                entries.append({"type": "file", "path": path, **commit.tree[path].metadata("oid")})
            elif any(p.startswith(f"{path}/") for p in commit.tree):
                entries.append(
                    {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(path.encode()).hexdigest()}
                )
        return 200, entries, {}

    def api_commits(self, token, query, body, repo, rev, kind="models"):
        r = self._readable(repo, token, kind)
        history = r.commits[: r.commits.index(self._resolve(r, rev)) + 1]
        return (
            200,
            [
                {"id": c.sha, "title": c.title, "message": "", "date": c.date, "authors": [{"user": USER}]}
                for c in reversed(history)
            ],
            {},
        )

    def api_preupload(self, token, query, body, repo, rev):
        self._require_token(token)
        commit = self._resolve(self._repo(repo), rev)
        files = []
        for f in json.loads(body)["files"]:
            mode = "lfs" if is_lfs(f["path"], f["size"], base64.b64decode(f["sample"])) else "regular"
            oid = commit.tree[f["path"]].etag if f["path"] in commit.tree else None
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return 200, {"files": files, "commitOid": commit.sha}, {}

    def api_lfs_batch(self, token, query, body, repo):
        self._require_token(token)
        self._repo(repo)
        objects = []
        for obj in json.loads(body)["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self._has_blob(obj["oid"]):  # no "actions": the client skips the upload
                item["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"}}
            objects.append(item)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def api_lfs_put(self, token, query, body, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, None, f"uploaded bytes do not hash to {oid}")
        self._store(body, True)
        return 200, b"", {}

    def api_commit(self, token, query, body, repo, rev):
        self._require_token(token)
        r = self._repo(repo)
        ops = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(op["value"] for op in ops if op["key"] == "header")
        with self._lock:
            head = self._resolve(r, rev)
            if header.get("parentCommit") not in (None, head.sha):
                raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
            tree = dict(head.tree)
            for key, value in ((op["key"], op["value"]) for op in ops if op["key"] != "header"):
                if key == "file":
                    tree[value["path"]] = self._store(base64.b64decode(value["content"]), False)
                elif key == "lfsFile":
                    if not self._has_blob(value["oid"]):
                        raise HubError(422, None, f"LFS object {value['oid']} was never uploaded")
                    tree[value["path"]] = Entry.of(self._blob(value["oid"]), True)
                elif key == "deletedFile":
                    if tree.pop(value["path"], None) is None:
                        raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {value}")
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    tree = {p: e for p, e in tree.items() if not p.startswith(folder)}
                else:
                    raise HubError(400, None, f"unsupported commit operation {key}")
            sha = self._commit(r, header["summary"], tree)
        return 200, {"success": True, "commitOid": sha, "commitUrl": f"{self.url}/{repo}/commit/{sha}"}, {}

    def api_resolve(self, token, query, body, repo, rev, path, kind="models", byte_range=None):
        r = self._readable(repo, token, kind)
        commit = self._resolve(r, rev)
        if path not in commit.tree:
            raise HubError(
                404, "EntryNotFound", f"{path} does not exist at {commit.sha}", {"X-Repo-Commit": commit.sha}
            )
        entry = commit.tree[path]
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{entry.etag}"', "Content-Type": "application/octet-stream"}
        if entry.pointer_size is not None:  # LFS: what the Hub sends along with its redirect to the CDN
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        data = self._served(r, path, entry)
        if byte_range is None:
            return 200, data, headers
        # "bytes=a-b", "bytes=a-" or "bytes=-n": what fsspec's HTTP reads of parquet footers and row groups send
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", byte_range)
        if not match or match.groups() == ("", ""):
            raise HubError(400, None, f"unsupported Range: {byte_range}")
        first, last = match.groups()
        start = len(data) - int(last) if first == "" else int(first)
        end = len(data) - 1 if first == "" or last == "" else min(int(last), len(data) - 1)
        if start >= len(data) or start > end:
            raise HubError(
                416, None, f"Range {byte_range} outside {len(data)} bytes", {"Content-Range": f"bytes */{len(data)}"}
            )
        headers["Content-Range"] = f"bytes {max(start, 0)}-{end}/{len(data)}"
        return 206, data[max(start, 0) : end + 1], headers


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_KIND = r"(?P<kind>models|datasets)"  # read endpoints serve both; writes are for model repos only
ROUTES = [  # (methods, regex on the still-quoted URL path, HubServer endpoint method)
    ({"GET"}, r"/api/whoami-v2", "api_whoami"),
    ({"POST"}, r"/api/repos/create", "api_create_repo"),
    ({"POST"}, r"/api/validate-yaml", "api_validate_yaml"),
    ({"GET"}, rf"/api/{_KIND}/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "api_info"),
    ({"GET"}, rf"/api/{_KIND}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "api_tree"),
    ({"POST"}, rf"/api/{_KIND}/{_REPO}/paths-info/(?P<rev>[^/]+)", "api_paths_info"),
    ({"GET"}, rf"/api/{_KIND}/{_REPO}/commits/(?P<rev>[^/]+)", "api_commits"),
    ({"POST"}, rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", "api_preupload"),
    ({"POST"}, rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", "api_commit"),
    ({"POST"}, rf"/{_REPO}\.git/info/lfs/objects/batch", "api_lfs_batch"),
    ({"PUT"}, r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "api_lfs_put"),
    ({"GET", "HEAD"}, rf"/(?P<kind>datasets)/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "api_resolve"),
    ({"GET", "HEAD"}, rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "api_resolve"),
]


@contextmanager
def dead_endpoint() -> Iterator[str]:
    """The URL of a port on 127.0.0.1 where nobody listens: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """The URL of a server that takes connections (the kernel completes them into the listen backlog)
    and never answers a byte: a client waits until its timeout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


class _Handler(BaseHTTPRequestHandler):
    """Routes each request to a HubServer endpoint and writes its answer (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        # huggingface_hub 1.33 sends a Content-Length with every body (never chunked), LFS uploads too.
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hub, split = self.hub, urlsplit(self.path)
        with hub._lock:
            hub.requests.append(f"{self.command} {self.path}")
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") and len(auth) > len("Bearer ") else None
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        try:
            status = hub._injected_failure(self.command, self.path)
            if status is not None:
                raise HubError(status, None, f"Injected failure (fail_next) for {self.command} {split.path}")
            for methods, pattern, name in ROUTES:
                match = re.fullmatch(pattern, split.path)
                if match and self.command in methods:
                    groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    if name == "api_resolve" and self.headers.get("Range"):
                        groups["byte_range"] = self.headers["Range"]
                    return self._send(*getattr(hub, name)(token, query, body, **groups))
            raise HubError(404, None, f"no such endpoint: {self.command} {split.path}")
        except HubError as e:
            headers = {"X-Error-Message": str(e), **e.headers, **({"X-Error-Code": e.code} if e.code else {})}
            self._send(e.status, {"error": str(e)}, headers)
        except Exception as e:  # a request this fake cannot handle: 501 is not retried by the client
            self._send(501, {"error": f"fake hub failed on {self.command} {split.path}: {e!r}"}, {})

    do_HEAD = do_POST = do_PUT = do_GET

    def _send(self, status: int, payload: Any, headers: dict) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


HubServer.handler = _Handler  # defined after the class it serves
