"""A small fake Hugging Face Hub for tests: stdlib only, serves the real `huggingface_hub` client.

Only model repositories ("namespace/name") and the branch `main` exist. Endpoints used by
huggingface_hub 1.33 (client function -> requests it makes):

    create_repo          POST /api/repos/create                  (409 + {"url"} when it exists)
    whoami               GET  /api/whoami-v2                     (needs any token)
    model_info/repo_info GET  /api/models/{repo}[/revision/{rev}]  (?blobs=True: sizes, blob ids, LFS)
    list_repo_files      GET  /api/models/{repo}/tree/{rev}?recursive=True
    list_repo_commits    GET  /api/models/{repo}/commits/{rev}
    hf_hub_download      HEAD then GET /{repo}/resolve/{rev}/{path}
    snapshot_download    model_info (only if rev is not a 40-hex sha), tree at the sha, then
                         hf_hub_download of each file matching allow_patterns
    upload_folder        [POST /api/validate-yaml when README.md is uploaded]
                         POST /api/models/{repo}/preupload/{rev}  -> "regular" or "lfs" + remote oid
                         POST /{repo}.git/info/lfs/objects/batch  (LFS files not stored yet)
                         PUT  /lfs-upload/{sha256}                (the "basic" transfer href)
                         POST /api/models/{repo}/commit/{rev}     (ndjson; regular files base64)

Wiring: huggingface_hub reads HF_ENDPOINT, HF_HUB_DISABLE_XET, HF_HOME, ... once, at import, and
binds module-level helpers (`huggingface_hub.upload_folder`, ...) to an `HfApi` built then, so
patching a running interpreter is fragile. Run the client in a fresh interpreter instead, with
`server.client_env(home)` (see `run_client`). HF_HUB_DISABLE_XET=1 is required: with hf_xet
installed the client uploads LFS files to a Xet CAS service, which this fake does not implement.

Unchanged re-upload: the client skips files whose preupload "oid" (git blob sha1, or sha256 for
LFS) equals its local one, and makes no commit at all when nothing is left. Like the real Hub,
this server itself accepts a commit that changes nothing and records it.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

USER = "tester"
TOKEN = "hf_fake_test_token"
# Paths the Hub stores with git LFS (its default .gitattributes); binary or >= 10 MiB files are LFS too.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".npz", ".onnx", ".gguf",
                ".h5", ".msgpack", ".pkl", ".model", ".zip", ".tar", ".gz", ".wav", ".flac", ".mp3")
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()


class HubError(Exception):
    """An error response with the X-Error-Code header that huggingface_hub maps to its exceptions."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.headers = status, code, headers or {}


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, size: int, sample: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= 10 * 2**20 or b"\0" in sample


@dataclass(frozen=True)
class Entry:
    """A file in a commit: content address (sha256), size, and whether git stores it with LFS."""

    sha256: str
    size: int
    lfs: bool

    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()


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
    tampered: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (path, sha256) -> served bytes


class HubServer:
    """In-process fake Hub on 127.0.0.1. Blobs live in memory, or under `root` when given."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else None
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []  # "METHOD /path?query" for every request received
        self._blobs: dict[str, bytes] = {}
        self._failures: list[list] = []  # [method, substring, status, remaining]
        self._lock = threading.RLock()
        self._counter = itertools.count()
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "call start() first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def client_env(self, home: Path, token: str | None = TOKEN) -> dict[str, str]:
        """Environment for a subprocess whose huggingface_hub talks to this server only."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        env.update(HF_ENDPOINT=self.url, HF_HOME=str(home), HF_HUB_DISABLE_XET="1",
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
        if token:
            env["HF_TOKEN"] = token
        return env

    # -- test helpers (server side) ----------------------------------------------------------
    def seed(self, repo_id: str, files: dict[str, bytes | Path], message: str = "init") -> str:
        """Commit `files` to `main` of `repo_id` (created, empty and public, if missing); return the sha."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo(private=False))
            tree = dict(repo.commits[-1].tree) if repo.commits else {}
            for path, data in files.items():
                data = data.read_bytes() if isinstance(data, Path) else data
                tree[path] = Entry(self._put_blob(data), len(data), is_lfs(path, len(data), data[:512]))
            return self._commit(repo, message, tree)

    def commits(self, repo_id: str) -> list[str]:
        """Commit shas of `main`, newest first (the order of `list_repo_commits`)."""
        return [c.sha for c in reversed(self._repo(repo_id).commits)]

    def files(self, repo_id: str, revision: str | None = None) -> dict[str, bytes]:
        """The bytes the server serves for each file at `revision` (default `main`), tampering included."""
        repo = self._repo(repo_id)
        return {p: self._served(repo, p, e) for p, e in self._resolve(repo, revision or "main").tree.items()}

    def tamper(self, repo_id: str, path: str, data: bytes) -> None:
        """Serve `data` for `path` from now on, while all metadata (ETag, sizes, hashes) keeps
        describing the committed file and no commit is made. Same-length data passes the client's
        size check, so only hash verification catches it."""
        repo = self._repo(repo_id)
        entry = self._resolve(repo, "main").tree[path]
        with self._lock:
            repo.tampered[(path, entry.sha256)] = data

    def fail_next(self, method: str, path_substring: str, status: int = 500, count: int = 1) -> None:
        """Answer the next `count` `method` requests whose path contains `path_substring` with `status`.
        Note the client retries 408/429/5xx by itself on most calls, though not on POST /commit."""
        with self._lock:
            self._failures.append([method.upper(), path_substring, status, count])

    # -- storage -----------------------------------------------------------------------------
    def _put_blob(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            if self.root is None:
                self._blobs[sha] = data
            elif not (self.root / sha).exists():
                self.root.mkdir(parents=True, exist_ok=True)
                (self.root / f"{sha}.tmp").write_bytes(data)
                (self.root / f"{sha}.tmp").replace(self.root / sha)
        return sha

    def _has_blob(self, sha: str) -> bool:
        return sha in self._blobs if self.root is None else (self.root / sha).exists()

    def _blob(self, sha: str) -> bytes:
        return self._blobs[sha] if self.root is None else (self.root / sha).read_bytes()

    def _served(self, repo: Repo, path: str, entry: Entry) -> bytes:
        tampered = repo.tampered.get((path, entry.sha256))
        return self._blob(entry.sha256) if tampered is None else tampered

    def _commit(self, repo: Repo, title: str, tree: dict[str, Entry]) -> str:
        parent = repo.commits[-1].sha if repo.commits else ""
        listing = "".join(f"{p}:{e.sha256}\n" for p, e in sorted(tree.items()))
        seed = f"{parent}\n{title}\n{listing}{time.time_ns()}-{next(self._counter)}"
        sha = hashlib.sha1(seed.encode()).hexdigest()
        date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        repo.commits.append(Commit(sha, title, date, tree))
        return sha

    def _repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, "RepoNotFound", f"Repository Not Found for {repo_id}.")
        return self.repos[repo_id]

    def _readable(self, repo_id: str, token: str | None) -> Repo:
        """Like the Hub, a private repo is "not found" for anonymous callers (any token may read it)."""
        repo = self._repo(repo_id)
        if repo.private and token is None:
            raise HubError(404, "RepoNotFound", f"Repository Not Found for {repo_id}.")
        return repo

    @staticmethod
    def _resolve(repo: Repo, revision: str) -> Commit:
        if revision == "main":
            return repo.commits[-1]
        for commit in repo.commits:
            if commit.sha == revision:
                return commit
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _injected_failure(self, method: str, path: str) -> int | None:
        with self._lock:
            for rule in self._failures:
                if rule[0] == method and rule[1] in path:
                    rule[3] -= 1
                    if rule[3] == 0:
                        self._failures.remove(rule)
                    return rule[2]
        return None

    # -- endpoints: each takes (token, query, body, **url groups) and returns (status, json|bytes, headers)
    def whoami(self, token, query, body):
        if token is None:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return 200, {"type": "user", "name": USER, "fullname": "Test User", "orgs": [],
                     "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}}, {}

    def create_repo(self, token, query, body):
        payload = json.loads(body)
        if payload.get("type", "model") != "model":
            raise HubError(400, None, "this fake hub only has model repositories")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.url}/{repo_id}"
        with self._lock:
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", "url": url}, {}
            repo = self.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
            sha = self._put_blob(GITATTRIBUTES)
            self._commit(repo, "initial commit", {".gitattributes": Entry(sha, len(GITATTRIBUTES), False)})
        return 200, {"url": url, "name": repo_id}, {}

    def validate_yaml(self, token, query, body):
        return 200, {"errors": [], "warnings": []}, {}

    def info(self, token, query, body, repo, rev=None):
        r = self._readable(repo, token)
        commit = self._resolve(r, rev or "main")
        siblings = []
        for path, e in sorted(commit.tree.items()):
            sibling = {"rfilename": path}
            if query.get("blobs") in ("True", "true", "1"):
                sibling.update(size=e.size, blobId=self._oid(e))
                if e.lfs:
                    sibling["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": len(e.pointer())}
            siblings.append(sibling)
        return 200, {"_id": repo, "id": repo, "modelId": repo, "author": repo.split("/")[0],
                     "sha": commit.sha, "lastModified": commit.date, "createdAt": r.commits[0].date,
                     "private": r.private, "gated": False, "disabled": False, "downloads": 0,
                     "likes": 0, "tags": [], "siblings": siblings}, {}

    def tree(self, token, query, body, repo, rev, path=None):
        commit = self._resolve(self._readable(repo, token), rev)
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = query.get("recursive") in ("True", "true", "1")
        entries: dict[str, dict] = {}
        for p, e in sorted(commit.tree.items()):
            if not p.startswith(prefix):
                continue
            parts = p[len(prefix):].split("/")
            for depth in range(1, len(parts)):  # the folders between prefix and file
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries[folder] = {"type": "directory", "path": folder, "size": 0,
                                       "oid": hashlib.sha1(folder.encode()).hexdigest()}
            if recursive or len(parts) == 1:
                entries[p] = {"type": "file", "path": p, "size": e.size, "oid": self._oid(e)}
                if e.lfs:
                    entries[p]["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(e.pointer())}
        if path and not entries:
            raise HubError(404, "EntryNotFound", f"{path} does not exist at {commit.sha}")
        return 200, list(entries.values()), {}

    def list_commits(self, token, query, body, repo, rev):
        r = self._readable(repo, token)
        head = self._resolve(r, rev)
        history = r.commits[: r.commits.index(head) + 1]
        return 200, [{"id": c.sha, "title": c.title, "message": "", "date": c.date,
                      "authors": [{"user": USER}]} for c in reversed(history)], {}

    def preupload(self, token, query, body, repo, rev):
        commit = self._resolve(self._writable(repo, token), rev)
        files = []
        for f in json.loads(body)["files"]:
            mode = "lfs" if is_lfs(f["path"], f["size"], base64.b64decode(f["sample"])) else "regular"
            entry = commit.tree.get(f["path"])
            oid = None if entry is None else entry.sha256 if entry.lfs else self._oid(entry)
            files.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return 200, {"files": files, "commitOid": commit.sha}, {}

    def lfs_batch(self, token, query, body, repo):
        self._writable(repo, token)
        objects = []
        for obj in json.loads(body)["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not self._has_blob(obj["oid"]):
                item["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"}}
            objects.append(item)
        return 200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}

    def lfs_put(self, token, query, body, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, None, f"uploaded bytes do not hash to {oid}")
        self._put_blob(body)
        return 200, b"", {}

    def commit(self, token, query, body, repo, rev):
        r = self._writable(repo, token)
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        with self._lock:
            head = self._resolve(r, rev)
            if header.get("parentCommit") not in (None, head.sha):
                raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
            tree = dict(head.tree)
            for op in (x for x in lines if x["key"] != "header"):
                key, value = op["key"], op["value"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    tree[value["path"]] = Entry(self._put_blob(data), len(data), False)
                elif key == "lfsFile":
                    if not self._has_blob(value["oid"]):
                        raise HubError(422, None, f"LFS object {value['oid']} was never uploaded")
                    tree[value["path"]] = Entry(value["oid"], value["size"], True)
                elif key == "deletedFile":
                    if tree.pop(value["path"], None) is None:
                        raise HubError(404, "EntryNotFound", "A file with this name doesn't exist")
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    tree = {p: e for p, e in tree.items() if not p.startswith(folder)}
                else:
                    raise HubError(400, None, f"unsupported commit operation {key}")
            sha = self._commit(r, header["summary"], tree)
        return 200, {"success": True, "commitOid": sha, "commitUrl": f"{self.url}/{repo}/commit/{sha}"}, {}

    def resolve(self, token, query, body, repo, rev, path):
        r = self._readable(repo, token)
        commit = self._resolve(r, rev)
        entry = commit.tree.get(path)
        if entry is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist at {commit.sha}",
                           {"X-Repo-Commit": commit.sha})
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{entry.sha256 if entry.lfs else self._oid(entry)}"',
                   "Content-Type": "application/octet-stream"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        return 200, self._served(r, path, entry), headers

    def _writable(self, repo_id: str, token: str | None) -> Repo:
        if token is None:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return self._repo(repo_id)

    def _oid(self, entry: Entry) -> str:
        """The git blob id: of the LFS pointer for LFS files, of the content otherwise."""
        return git_blob_id(entry.pointer() if entry.lfs else self._blob(entry.sha256))


_REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [  # (methods, path regex on the still-quoted path, HubServer method name)
    ({"GET"}, r"/api/whoami-v2", "whoami"),
    ({"POST"}, r"/api/repos/create", "create_repo"),
    ({"POST"}, r"/api/validate-yaml", "validate_yaml"),
    ({"GET"}, rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "info"),
    ({"GET"}, rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ({"GET"}, rf"/api/models/{_REPO}/commits/(?P<rev>[^/]+)", "list_commits"),
    ({"POST"}, rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ({"POST"}, rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ({"POST"}, rf"/{_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ({"PUT"}, r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs_put"),
    ({"GET", "HEAD"}, rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    """Routes each request to a HubServer endpoint and writes its answer (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_POST = do_PUT = do_GET

    def _read_body(self) -> bytes:
        # huggingface_hub 1.33 sends a Content-Length with every body, LFS uploads included.
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._read_body()
        hub, split = self.hub, urlsplit(self.path)
        with hub._lock:
            hub.requests.append(f"{self.command} {self.path}")
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") and len(auth) > 7 else None
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        try:
            status = hub._injected_failure(self.command, self.path)
            if status is not None:
                raise HubError(status, None, f"Injected failure (fail_next) for {self.command} {split.path}")
            for methods, pattern, name in ROUTES:
                match = re.fullmatch(pattern, split.path)
                if match and self.command in methods:
                    groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    self._send(*getattr(hub, name)(token, query, body, **groups))
                    return
            raise HubError(404, None, f"no such endpoint: {self.command} {split.path}")
        except HubError as e:
            headers = {"X-Error-Message": str(e), **e.headers}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._send(e.status, {"error": str(e)}, headers)

    def _send(self, status: int, payload: Any, headers: dict) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        if not isinstance(payload, bytes):
            self.send_header("Content-Type", "application/json")
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


_CLIENT = """
import json, sys, huggingface_hub
name, kwargs = json.loads(sys.argv[1])
try:
    out = getattr(huggingface_hub, name)(**kwargs)
    out = vars(out) if hasattr(out, "__dict__") else out
    print(json.dumps({"ok": out}, default=lambda o: vars(o) if hasattr(o, "__dict__") else str(o)))
except Exception as e:
    print(json.dumps({"error": [c.__name__ for c in type(e).__mro__], "message": str(e)}))
"""


class ClientError(Exception):
    """A huggingface_hub exception raised in the client subprocess; `types` is its class's MRO names."""

    def __init__(self, types: list[str], message: str):
        super().__init__(f"{types[0]}: {message}")
        self.types, self.message = types, message


def run_client(env: dict[str, str], name: str, **kwargs: Any) -> Any:
    """Call `huggingface_hub.<name>(**kwargs)` in a fresh interpreter with `env` (see
    `HubServer.client_env`); return its result as JSON data (objects become their `vars`), or
    raise ClientError. Arguments must be JSON-serialisable (pass paths as str)."""
    proc = subprocess.run([sys.executable, "-c", _CLIENT, json.dumps([name, kwargs])],
                          env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"client crashed ({proc.returncode}):\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "error" in result:
        raise ClientError(result["error"], result["message"])
    return result["ok"]
