"""Files as every stage writes them: all or nothing (a directory appears only when complete, a text
file is replaced in one rename), destinations checked before the work, content hashes, private copies,
and one writer at a time for a work directory. No MLX here."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import struct
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import UserError

# What a write can meet that the user fixes (space, quota, a read-only or too-strict place, a long
# name): one line, not a traceback. Any other OSError is a bug and keeps its traceback.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EFBIG}
NAME_MAX = 255  # bytes in one path component on Linux and macOS filesystems (os.pathconf may say less)
PARTIAL_NAME_CHARS = 48  # a partial's name keeps this much of its final name: it always fits NAME_MAX
# How MLX's file writer (mx.save_safetensors, under mlx_lm's save_model) words a failed write, e.g. on a
# full disk: a RuntimeError "[write] Unable to write 9979 bytes to file.", with no errno to tell it by.
MLX_WRITE_ERROR = "[write] "
FICLONE = 0x40049409  # Linux ioctl: a copy-on-write clone of a whole file (btrfs, XFS); <linux/fs.h>


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


def printable(path: str | Path) -> str:
    """A path as text any terminal or JSON encoder takes: the bytes of a file name that are not UTF-8
    (which Python holds as lone surrogates) become backslash escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def json_text(value, **dumps) -> str:
    """JSON as every output of ours writes it: UTF-8 text, non-ASCII kept. A file name's bytes that are
    not UTF-8 (lone surrogates, as os.fsdecode holds them) become \\udcXX escapes, which any JSON reader
    takes and which read back (os.fsencode) to the same bytes: the name stays the path it was."""
    return json.dumps(value, ensure_ascii=False, **dumps).encode("utf-8", "backslashreplace").decode("utf-8")


def require_utf8_path(path: str | Path) -> None:
    """Refuse a path that is not valid UTF-8 where MLX or torch will open it: both take the name as UTF-8
    text and fail there (MLX with "std::bad_cast" after the work is done, torch as if the file were
    corrupt). Python itself opens any name, so only these places need it."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(
            f"{printable(path)}: the path is not valid UTF-8, and MLX and torch open only UTF-8 paths; "
            "rename it or choose another"
        ) from None


# -- destinations: checked before the work, failures at the end in one line --------------------------


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX


def check_destination(path: str | Path, *, directory: bool = True, exists_ok: bool = False) -> None:
    """Refuse, before any work, a destination that cannot be written: under a regular file, in a
    place this process may not write (read-only, no permission), a name longer than the filesystem
    allows, a directory where a file goes or the reverse, or (unless `exists_ok`) one that exists.
    A full disk cannot be known in advance: `staged_output` and `write_text_atomic` catch it."""
    path = Path(path)
    too_long = [part for part in path.parts if len(os.fsencode(part)) > NAME_MAX]
    if too_long:  # before any stat: the kernel refuses the whole path (ENAMETOOLONG)
        raise UserError(f"cannot write {path}: the name {too_long[0][:40]}... is longer than {NAME_MAX} bytes")
    _refuse_dangling(path)
    if path.exists():
        if not exists_ok:
            raise UserError(f"destination already exists: {path}")
        if directory and not path.is_dir():
            raise UserError(f"cannot write {path}: it exists and is not a directory")
        if not directory and path.is_dir():
            raise UserError(f"cannot write {path}: it is a directory")
    # The nearest folder that exists is where the first entry is created (the rest is created under it).
    base = path if directory and path.is_dir() else path.parent
    missing = [] if base is path else [path.name]
    while not base.exists() and base != base.parent:
        _refuse_dangling(base, path)
        missing.append(base.name)
        base = base.parent
    if not base.is_dir():
        raise UserError(f"cannot write {path}: {base} is not a directory")
    limit = _name_max(base)
    for name in missing:
        if len(os.fsencode(name)) > limit:
            raise UserError(f"cannot write {path}: the name {name[:40]}... is longer than {limit} bytes")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: {base} is read-only or not writable by this user")


def _refuse_dangling(link: Path, dst: Path | None = None) -> None:
    """A symbolic link that leads nowhere (to a missing target, or in a loop) looks absent to exists(), yet
    nothing is written where it points: mkdir and a folder's rename(2) fail, once the work is done, and a
    file's rename replaces the link itself. Which of the two the user meant is not known: refused."""
    if link.is_symlink() and not link.exists():
        where = f"{link} is" if dst is not None and dst != link else "it is"
        raise UserError(
            f"cannot write {dst or link}: {where} a symbolic link to nothing, or a loop of links ({os.readlink(link)})"
        )


@contextmanager
def write_errors(dst: Path, every: bool = False):
    """The one place an OSError met while writing DST becomes one UserError line: those the user fixes
    (WRITE_ERRNOS), or `every` one where the body only creates folders under a checked destination.
    Any other keeps its traceback: it is a bug."""
    try:
        yield
    except OSError as err:
        if not every and err.errno not in WRITE_ERRNOS:
            raise
        where = f" ({err.filename})" if err.filename and str(err.filename) != str(dst) else ""
        raise UserError(f"cannot write {dst}: {err.strerror or err}{where}; nothing was left behind") from None


def _partial(dst: Path) -> Path:
    """DST's partial name, unique to this process (concurrent writers of one DST never meet) and
    short enough for any name that fits: NAME.PID.tmp, NAME cut to PARTIAL_NAME_CHARS."""
    return dst.with_name(f"{dst.name[:PARTIAL_NAME_CHARS]}.{os.getpid()}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _try_lock(fd: int) -> bool:
    """Take an exclusive flock(2) on `fd` without waiting (closing `fd` releases it): False when another
    process holds it. A filesystem without locks (some NFS setups) counts as taken: the caller goes
    on unguarded, as it would without locks at all."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as err:
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EBADF, errno.EINVAL):
            raise
    return True


def _lock_partial(folder: Path) -> int:
    """Hold an flock on a partial directory while it is written (the descriptor; closing it releases
    the lock). A PID names its writer only within one PID namespace: the lock also tells a writer in
    another container sharing the volume, whose PID means nothing here, from a dead one."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        taken = _try_lock(fd)
    except OSError:
        taken = False
    if not taken:
        os.close(fd)
        raise UserError(f"cannot write {folder}: another process is writing it")
    return fd


def _locked(folder: Path) -> bool:
    """Whether a writer, of this namespace or another, holds `folder`'s partial lock now."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        return not _try_lock(fd)  # a lock taken here is released by the close below
    except OSError:
        return False
    finally:
        os.close(fd)


def _remove_abandoned(dst: Path) -> None:
    """Partials of DST left by processes that died (kill -9, power loss), this process's PID's own
    included (an earlier process had it); a live writer's stay: one whose PID lives here or that
    holds its partial's lock."""
    prefix = dst.name[:PARTIAL_NAME_CHARS] + "."
    if not dst.parent.is_dir():
        return
    for entry in dst.parent.iterdir():
        pid = entry.name[len(prefix) : -len(".tmp")]
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp") and pid.isdigit()):
            continue
        if (int(pid) != os.getpid() and _alive(int(pid))) or (entry.is_dir() and _locked(entry)):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def safetensors_shortfall(path: Path) -> int:
    """Bytes missing from a safetensors file: its header declares the size. MLX's writer
    (mx.save_safetensors, used by mlx_lm's save_model) reports a failed write as MLX_WRITE_ERROR (MLX
    0.32.4, on a full tmpfs and on /dev/full); a writer that reported nothing would leave a short file,
    so a stage also checks what it wrote."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError):
        return max(1, size)  # not even a readable header
    return max(0, 8 + length + end - size)


def _check_complete(tmp: Path, dst: Path) -> None:
    for file in tmp.rglob("*.safetensors"):
        if short := safetensors_shortfall(file):
            raise UserError(
                f"cannot write {dst}: {file.name} was written {short:,d} bytes short (disk full?); "
                "nothing was left behind"
            )


@contextmanager
def staged_output(dst: Path):
    """Yield a partial directory (DST.PID.tmp); rename it to DST only if the body completes and what it
    wrote is whole, remove it otherwise. A write that fails for want of space, quota or permission is
    one UserError line. Another process writing the same DST keeps its own partial; the one that
    finishes second is refused, and its partial removed."""
    dst = Path(dst)
    check_destination(dst)
    _remove_abandoned(dst)
    tmp = _partial(dst)
    with write_errors(dst, every=True):
        tmp.mkdir(parents=True)
    lock = _lock_partial(tmp)
    try:
        try:
            with write_errors(dst):
                yield tmp
                _check_complete(tmp, dst)
        except BaseException as err:  # an interrupt (Ctrl-C) too: no partial stays behind
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(err, RuntimeError) and str(err).startswith(MLX_WRITE_ERROR):
                why = str(err)[len(MLX_WRITE_ERROR) :].rstrip(".")
                raise UserError(f"cannot write {dst}: {why} (disk full?); nothing was left behind") from None
            raise
        _finish(tmp, dst)
    finally:
        os.close(lock)


def _finish(tmp: Path, dst: Path) -> None:
    """Rename the complete partial to DST, unless another process wrote DST meanwhile."""
    try:
        with write_errors(dst):
            # rename(2) would replace an empty directory that appeared meanwhile: look first (a window of
            # microseconds; `run` holds the work directory's lock, so only direct commands can race here).
            if dst.exists():
                raise FileExistsError(errno.EEXIST, "exists", str(dst))
            tmp.rename(dst)
    except (OSError, UserError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise UserError(f"destination already exists: {dst} (written meanwhile by another process)") from None
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file via a partial (PATH.PID.tmp) and a rename: a reader never sees half a file,
    a failed write leaves nothing, two writers never share a partial."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """As write_text_atomic, for bytes (a PNG)."""
    path = Path(path)
    check_destination(path, directory=False, exists_ok=True)
    partial = _partial(path)
    try:
        with write_errors(path, every=True):  # only folders, under the destination checked above
            path.parent.mkdir(parents=True, exist_ok=True)
        with write_errors(path):
            partial.write_bytes(data)
            partial.replace(path)
    except BaseException:  # an interrupt (Ctrl-C) too: no partial stays behind
        partial.unlink(missing_ok=True)
        raise


# -- what a stage read: private copies, recorded hashes ----------------------------------------------


def stamp(path: Path) -> list[int]:
    """What changes whenever a file's bytes do: device, inode (a replaced file), size, and the
    modification and change times. The kernel sets ctime on every write and truncate and no call can
    set it back (short of setting the system clock), so an equal stamp means no write since it was
    taken (to the filesystem's clock tick, which a writer would have to hit between our last write and
    the stamp). It gates re-hashing only: a different stamp costs a hash, never a wrong answer."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def same_content(path: Path, recorded_sha256: str | None, recorded_stamp: list[int] | None) -> bool:
    """Whether `path` still holds the bytes whose SHA-256 was recorded: by its stamp, else by hashing."""
    if not recorded_sha256 or not path.is_file():
        return False
    return stamp(path) == recorded_stamp or sha256(path) == recorded_sha256


def copy_hashed(src: Path, dst: Path) -> str:
    """Copy `src` to `dst` (a reflink where the filesystem clones files, else bytes) and return the
    SHA-256 of the copy: the copy is ours, so a later change to `src` (or to any hard link of it, as a
    hub cache or a user's folder holds) cannot reach what the next stage reads."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            digest = None
        except OSError:  # not a cloning filesystem (ext4, tmpfs, overlay) or another device
            while chunk := fin.read(1 << 24):
                digest.update(chunk)
                fout.write(chunk)
    shutil.copystat(src, dst)
    return sha256(dst) if digest is None else digest.hexdigest()


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (no second copy of a 2 GB checkpoint from the hub cache) or copy across filesystems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.hardlink_to(src.resolve())
    except OSError:
        shutil.copy2(src, dst)


# -- one writer per work directory -------------------------------------------------------------------


@contextmanager
def exclusive(folder: Path, busy: str):
    """Hold an advisory lock on `folder` (created if missing) for the body; refuse with `busy` when
    another process holds it. The lock is flock(2) on the directory itself: no lock file to leave
    behind, and the kernel releases it when the holder exits, however it dies."""
    folder = Path(folder)
    check_destination(folder, exists_ok=True)
    with write_errors(folder, every=True):
        folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        if not _try_lock(fd):
            raise UserError(busy)
        yield folder
    finally:
        os.close(fd)  # releases the lock


def read_json_object(path: Path) -> dict:
    """A JSON object from a file; {} when the file is missing, unreadable or holds anything else (the
    caller says in one line what it expected there)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
