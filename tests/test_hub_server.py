"""The fake Hub (tests/hub_server.py) driven by the real huggingface_hub client.

huggingface_hub reads HF_ENDPOINT (and HF_HUB_DISABLE_XET, HF_HOME...) when it is imported, so every
client call runs in a fresh interpreter with the server's `client_env` (see `client_for`), never in
the pytest process.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.hub_server import TOKEN, HubServer

CLIENT = """
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
    """An exception huggingface_hub raised in the client process; `types` are its class's MRO names
    (so "EntryNotFoundError" is among them for a RemoteEntryNotFoundError)."""

    def __init__(self, types: list[str], message: str):
        super().__init__(f"{types[0]}: {message}")
        self.types, self.message = types, message


def client_for(server: HubServer, home: Path, token: str | None = TOKEN) -> Callable[..., Any]:
    """call(name, **kwargs) runs `huggingface_hub.<name>(**kwargs)` in a subprocess wired to `server`
    and returns the result as JSON data (objects as their vars()), or raises ClientError."""
    env = server.client_env(home, token=token)

    def call(name: str, **kwargs: Any) -> Any:
        proc = subprocess.run(
            [sys.executable, "-c", CLIENT, json.dumps([name, kwargs])],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if "error" in result:
            raise ClientError(result["error"], result["message"])
        return result["ok"]

    return call


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture
def hf(hub, tmp_path):
    return client_for(hub, tmp_path / "hf-home")


def expect_error(error: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> ClientError:
    with pytest.raises(ClientError) as info:
        call(*args, **kwargs)
    assert error in info.value.types, info.value
    return info.value


def local_files(folder: Path) -> dict[str, bytes]:
    """Files under `folder` by relative path, without huggingface_hub's .cache/ bookkeeping."""
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    return {name: p.read_bytes() for name, p in files.items() if not name.startswith(".cache/")}


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def without_gitattributes(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k != ".gitattributes"}


V1 = {
    "config.json": b'{"dim": 8}\n',
    "model.safetensors": random.Random(1).randbytes(4096),
    "tokenizer/vocab.txt": b"a\nb\n",
    "tokenizer/merges.txt": b"a b\n",
    "notes.md": b"# notes\n",
}
UPLOAD = {
    "model.safetensors": random.Random(0).randbytes(3 * 2**20),
    "config.json": b'{"a": 1}\n',
    "README.md": b"---\nlicense: mit\n---\n# A model\n",
    "sub/notes.txt": b"hello\n",
}


def test_snapshot_download_at_a_pinned_sha_fetches_only_allowed_files(hub, hf, tmp_path):
    v1 = hub.seed("org/model", V1)
    v2 = hub.seed("org/model", {"config.json": b'{"dim": 16}\n'}, message="bigger")
    assert hub.commits("org/model") == [v2, v1]

    out = hf(
        "snapshot_download",
        repo_id="org/model",
        revision=v1,
        local_dir=str(tmp_path / "v1"),
        allow_patterns=["*.json", "*.safetensors", "tokenizer/vocab.txt"],
    )
    assert local_files(Path(out)) == {k: V1[k] for k in ("config.json", "model.safetensors", "tokenizer/vocab.txt")}
    # By branch name it is the newest commit; without local_dir it lands in the cache under HF_HOME.
    out = hf("snapshot_download", repo_id="org/model", revision="main", allow_patterns=["config.json"])
    assert Path(out).name == v2 and local_files(Path(out)) == {"config.json": b'{"dim": 16}\n'}
    one = hf("hf_hub_download", repo_id="org/model", filename="tokenizer/merges.txt", revision=v1)
    assert Path(one).read_bytes() == V1["tokenizer/merges.txt"]


def test_metadata_calls_describe_the_commits(hub, hf):
    v1 = hub.seed("org/model", V1)
    v2 = hub.seed("org/model", {"extra.txt": b"x"})
    info = hf("model_info", repo_id="org/model", revision=v1, files_metadata=True)
    siblings = {s["rfilename"]: s for s in info["siblings"]}
    assert info["sha"] == v1 and set(siblings) == set(V1)
    weights, config = siblings["model.safetensors"], siblings["config.json"]
    assert weights["lfs"] == {
        "size": 4096,
        "sha256": hashlib.sha256(V1["model.safetensors"]).hexdigest(),
        "pointer_size": weights["lfs"]["pointer_size"],
    }
    assert config["lfs"] is None and config["size"] == len(V1["config.json"])
    assert sorted(hf("list_repo_files", repo_id="org/model")) == sorted([*V1, "extra.txt"])
    assert [c["commit_id"] for c in hf("list_repo_commits", repo_id="org/model")] == [v2, v1]
    assert hub.files("org/model", revision=v1) == V1


def test_missing_repo_revision_and_file_raise_the_hub_errors(hub, hf, tmp_path):
    hub.seed("org/model", V1)
    expect_error("RepositoryNotFoundError", hf, "snapshot_download", repo_id="org/absent")
    expect_error(
        "RevisionNotFoundError",
        hf,
        "snapshot_download",
        repo_id="org/model",
        revision="0" * 40,
        local_dir=str(tmp_path / "dl"),
    )
    expect_error("RevisionNotFoundError", hf, "model_info", repo_id="org/model", revision="no-such-branch")
    expect_error("EntryNotFoundError", hf, "hf_hub_download", repo_id="org/model", filename="absent.bin")


def test_upload_folder_round_trips_lfs_and_regular_files(tmp_path):
    src = write_folder(tmp_path / "src", UPLOAD)
    with HubServer(root=tmp_path / "blobs") as hub:  # contents on disk this time
        hf = client_for(hub, tmp_path / "hf-home")
        for _ in range(2):  # exist_ok=True: the second call gets a 409 and still returns the URL
            url = hf("create_repo", repo_id="org/new", private=True, exist_ok=True)
        assert url["url"] == f"{hub.url}/org/new" and len(hub.commits("org/new")) == 1  # .gitattributes
        commit = hf("upload_folder", repo_id="org/new", folder_path=str(src))

        assert hub.commits("org/new")[0] == commit["oid"] and len(hub.commits("org/new")) == 2
        assert without_gitattributes(hub.files("org/new")) == UPLOAD
        sha = hashlib.sha256(UPLOAD["model.safetensors"]).hexdigest()
        assert [r for r in hub.requests if r.startswith("PUT ")] == [f"PUT /lfs-upload/{sha}"]  # LFS: weights only
        out = hf("snapshot_download", repo_id="org/new", local_dir=str(tmp_path / "back"))
        assert without_gitattributes(local_files(Path(out))) == UPLOAD
        info = hf("model_info", repo_id="org/new", files_metadata=True)
        lfs = {s["rfilename"]: s["lfs"] for s in info["siblings"]}
        assert info["private"] and lfs["model.safetensors"]["sha256"] == sha and lfs["config.json"] is None
        anonymous = client_for(hub, tmp_path / "anon-home", token=None)
        expect_error("RepositoryNotFoundError", anonymous, "model_info", repo_id="org/new")


def test_unchanged_reupload_adds_no_commit(hub, hf, tmp_path):
    src = write_folder(tmp_path / "src", UPLOAD)
    hf("create_repo", repo_id="org/new")
    first = hf("upload_folder", repo_id="org/new", folder_path=str(src))["oid"]
    seen = len(hub.requests)

    again = hf("upload_folder", repo_id="org/new", folder_path=str(src))["oid"]
    assert again == first and hub.commits("org/new")[0] == first and len(hub.commits("org/new")) == 2
    assert not [r for r in hub.requests[seen:] if r.startswith("PUT ") or "/commit/" in r]

    (src / "config.json").write_bytes(b'{"a": 2}\n')
    changed = hf("upload_folder", repo_id="org/new", folder_path=str(src))["oid"]
    assert hub.commits("org/new")[:2] == [changed, first] and hub.files("org/new")["config.json"] == b'{"a": 2}\n'


def test_failed_commit_raises_and_a_retry_succeeds(hub, hf, tmp_path):
    src = write_folder(tmp_path / "src", UPLOAD)
    hf("create_repo", repo_id="org/new")
    before = hub.commits("org/new")
    hub.fail_next("POST", "/commit/", status=500)

    error = expect_error("HfHubHTTPError", hf, "upload_folder", repo_id="org/new", folder_path=str(src))
    assert "500" in error.message and "Injected failure" in error.message
    assert hub.commits("org/new") == before  # the LFS object got uploaded, but nothing was committed

    commit = hf("upload_folder", repo_id="org/new", folder_path=str(src))
    assert hub.commits("org/new") == [commit["oid"], *before]
    assert without_gitattributes(hub.files("org/new")) == UPLOAD
    assert sum(r.startswith("PUT ") for r in hub.requests) == 1  # the retry reused the uploaded object


def test_whoami_with_and_without_a_token(hub, hf, tmp_path):
    assert hf("whoami")["name"] == "tester"
    expect_error("LocalTokenNotFoundError", client_for(hub, tmp_path / "anon", token=None), "whoami")


def test_tamper_changes_served_bytes_but_not_metadata(hub, hf, tmp_path):
    sha = hub.seed("org/model", V1)
    bad = bytes([V1["model.safetensors"][0] ^ 1]) + V1["model.safetensors"][1:]
    hub.tamper("org/model", "model.safetensors", bad)

    assert hub.commits("org/model") == [sha] and hub.files("org/model")["model.safetensors"] == bad
    info = hf("model_info", repo_id="org/model", revision=sha, files_metadata=True)
    listed = next(s for s in info["siblings"] if s["rfilename"] == "model.safetensors")["lfs"]["sha256"]
    out = hf(
        "hf_hub_download",
        repo_id="org/model",
        filename="model.safetensors",
        revision=sha,
        local_dir=str(tmp_path / "dl"),
    )
    assert Path(out).read_bytes() == bad  # huggingface_hub does not notice (same size)...
    assert hashlib.sha256(bad).hexdigest() != listed == hashlib.sha256(V1["model.safetensors"]).hexdigest()


def test_dataset_repo_at_a_given_commit_with_a_declared_hash(hub, hf, tmp_path):
    """A dataset repo under a chosen commit id; one LFS file served as a stand-in under a declared SHA-256
    (what tests/hub_datasets.py does for the real evaluation files), and partial reads of it."""
    import urllib.request

    sha, real = "71cacbfb7e2354c4226d01e70d77d5fca3d04ba1", "7113aa4c" + "0" * 56
    stand_in = random.Random(2).randbytes(1000)
    files = {"README.md": b"# data\n", "all/test.clean/0000.parquet": stand_in}
    declared = {"all/test.clean/0000.parquet": real}
    assert hub.seed("org/data", files, repo_type="dataset", sha=sha, declared=declared) == sha
    assert "org/data" not in hub.repos and hub.commits("org/data", repo_type="dataset") == [sha]

    info = hf(
        "get_paths_info",
        repo_id="org/data",
        paths=["all/test.clean/0000.parquet", "README.md", "absent"],
        revision=sha,
        repo_type="dataset",
    )
    by_path = {i["path"]: i for i in info}
    assert set(by_path) == {"all/test.clean/0000.parquet", "README.md"}  # an absent path is left out
    assert by_path["all/test.clean/0000.parquet"]["lfs"]["sha256"] == real and by_path["README.md"]["lfs"] is None
    out = hf(
        "hf_hub_download",
        repo_id="org/data",
        filename="all/test.clean/0000.parquet",
        revision=sha,
        repo_type="dataset",
        local_dir=str(tmp_path / "dl"),
    )
    assert Path(out).read_bytes() == stand_in  # the bytes served are the stand-in's
    expect_error("RepositoryNotFoundError", hf, "model_info", repo_id="org/data")  # not a model repo

    url = f"{hub.url}/datasets/org/data/resolve/{sha}/all/test.clean/0000.parquet"
    for byte_range, expected in (
        ("bytes=10-19", stand_in[10:20]),
        ("bytes=-8", stand_in[-8:]),
        ("bytes=990-", stand_in[990:]),
    ):
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": byte_range})) as response:
            assert response.status == 206 and response.read() == expected
            assert response.headers["Content-Range"].endswith("/1000")
