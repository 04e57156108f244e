"""Safe output files: one writer at a time, atomic replacement, one-line errors.

- **Lock.** :func:`output_lock` holds an advisory ``flock`` on ``.<name>.lock`` beside the output for as long
  as a stage writes it; a second process writing the same output fails at once ("another alseg process is
  writing it (pid N)"). The kernel drops the lock when its process dies, so a killed run never blocks the
  next one. The lock is re-entrant within one process.
- **Atomic replacement.** :func:`atomic_path` yields a unique temporary name ``.<name>.<pid>.<hex>.tmp`` in
  the output's folder; on success the file is fsynced and renamed onto the output (a file that exists under
  its final name is complete); on any failure it is removed. Temporaries of killed runs are removed the
  next time the output's lock is taken.
- **Errors.** An ``OSError`` while writing (full disk, ``ulimit -f``, read-only folder, a folder where the
  file should be) becomes one :class:`~alseg.errors.OutputError` naming the file; :func:`check_not_input`
  refuses an output that is also an input (same path, symlink or hard link) before anything is written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Iterable, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

from alseg.errors import OutputError, OutputExistsError

_HINTS = {
    errno.ENOSPC: "the disk is full; free some space and rerun",
    errno.EDQUOT: "the disk quota is exceeded; free some space and rerun",
    errno.EFBIG: "the file size limit is reached (ulimit -f)",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EACCES: "no permission; choose a writable folder",
    errno.EPERM: "no permission; choose a writable folder",
    errno.EISDIR: "a folder has that name; give a file name",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}
# locks this process holds: lock-file path -> [fd (-1: no locking here), depth, folders made for it]
_HELD: dict[str, list] = {}
_HELD_GUARD = threading.Lock()


def write_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """One-line :class:`OutputError` for an ``OSError`` raised while writing ``path``."""
    code = exc.errno
    if code is None:  # h5py reports the C library's errno inside its message
        m = re.search(r"errno = (\d+)", str(exc))
        code = int(m.group(1)) if m else None
    reason = os.strerror(code) if code else (exc.strerror or str(exc).splitlines()[0])
    hint = _HINTS.get(code, "check the folder and rerun")
    return OutputError(f"{path}: cannot write ({reason}); {hint}")


def check_writable(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Return ``path`` as a Path; raise when it exists and ``overwrite`` is false, or when it is a folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: output exists; pass --overwrite to replace it")
    return path


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # also symlinks and hard links
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_input(
    outputs: Iterable[str | os.PathLike | None], inputs: Iterable[str | os.PathLike | None]
) -> None:
    """Raise :class:`OutputError` when an output is the same file as an input (path, symlink or hard link).

    Call before anything is opened for writing: replacing an input would destroy it.
    """
    ins = [Path(p) for p in inputs if p is not None]
    for out in outputs:
        if out is None:
            continue
        out = Path(out)
        for inp in ins:
            if _same(out, inp):
                raise OutputError(f"{out}: this output is also an input ({inp}); write it to another path")


def partial_path(path: str | os.PathLike) -> Path:
    """Where an interrupted ``infer`` keeps its finished batches: the folder ``<path>.partial``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def lock_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.<pid>.<random hex>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _remove_stale_temps(path: Path) -> None:
    """Temporaries of ``path`` left by killed writers (only called while holding its lock)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.\d+\.[0-9a-f]+\.tmp")
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return text
    return "unknown"


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and those of its parents that do not exist, deepest first."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def _acquire(path: Path, lock: Path) -> int | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{path}: cannot write ({path.parent} is a file, not a folder)") from None
    except OSError as exc:
        raise write_error(path, exc) from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise write_error(path, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise OutputError(
                f"{path}: another alseg process is writing it (pid {pid}); wait for it to finish or stop it"
            ) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None  # this file system has no locks: write without one
            raise write_error(path, exc) from None
        # The previous holder unlinks the lock file on release; a file we opened before that is stale.
        try:
            st = os.stat(lock)
        except FileNotFoundError:
            os.close(fd)
            continue
        fst = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino):
            os.close(fd)
            continue
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd


def _release(lock: Path, fd: int | None) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        st, fst = os.stat(lock), os.fstat(fd)
        if (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino):
            os.unlink(lock)  # while still locked, so nobody can lock this inode and then find it gone
    os.close(fd)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the advisory lock of output ``path`` (re-entrant in one process); yields ``path``.

    Raises :class:`OutputError` at once when another process holds it, or when its folder is not writable.
    Temporaries of ``path`` left by killed writers are removed when the lock is first taken.
    """
    path = Path(path)
    if fcntl is None:  # pragma: no cover
        yield path
        return
    lock = lock_file(path)
    key = os.path.realpath(lock)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is None:
        made = _missing_folders(path.parent)
        fd = _acquire(path, lock)
        with _HELD_GUARD:
            _HELD[key] = held = [fd if fd is not None else -1, 1, made]
        _remove_stale_temps(path)
    try:
        yield path
    finally:
        with _HELD_GUARD:
            held[1] -= 1
            last = held[1] == 0
            if last:
                del _HELD[key]
        if last:
            _release(lock, held[0] if held[0] >= 0 else None)
            for folder in held[2]:  # made only to hold the lock: a failed stage leaves no empty folders
                try:
                    folder.rmdir()
                except OSError:
                    break


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a unique temporary path beside ``path`` (holding ``path``'s lock); on success fsync it and
    rename it onto ``path``. On failure the temporary is removed; an ``OSError`` becomes an
    :class:`OutputError` naming ``path``. The body should only write: any OSError in it is reported as a
    failure to write ``path``.
    """
    path = Path(path)
    with output_lock(path):
        tmp = temp_path(path)
        try:
            yield tmp
            if tmp.exists():
                fsync_file(tmp)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise write_error(path, exc) from None
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def holding_output_locks(*names: str, **when: str):
    """Decorator: hold :func:`output_lock` on the paths passed as arguments ``names`` (``None`` skipped) for
    the whole call, so that a second process writing the same output fails at once, not at the end.
    ``name="flag"`` also locks argument ``name``, but only when argument ``flag`` is true."""
    import functools
    import inspect

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            wanted = list(names) + [name for name, flag in when.items() if bound.arguments.get(flag)]
            with contextlib.ExitStack() as stack:
                for name in wanted:
                    if bound.arguments.get(name) is not None:
                        stack.enter_context(output_lock(bound.arguments[name]))
                return fn(*args, **kwargs)

        return wrapper

    return decorate


@contextlib.contextmanager
def removed_on_failure(*paths: str | os.PathLike) -> Iterator[None]:
    """Remove ``paths`` when the block fails: an output is not complete without what the block writes
    (its manifest), and a rerun should not find it."""
    try:
        yield
    except BaseException:
        for path in paths:
            with contextlib.suppress(OSError):
                Path(path).unlink()
        raise


def replace_last(target: str | os.PathLike, data: bytes, outputs: Iterable[str | os.PathLike],
                 write_outputs, *, rename=None) -> None:
    """All or nothing: ``write_outputs()`` writes ``outputs`` (say a selection and its manifest), then
    ``target`` (say the labeled list of ``select --update``) becomes ``data``.

    ``data`` goes to a temporary beside ``target`` first (the likeliest failure: its folder read-only or
    full), then ``write_outputs()`` runs, then the temporary is renamed onto ``target`` (``rename``, default
    ``os.replace`` looked up at the call, so tests can make it fail). Any failure removes the temporary and puts back what was at each output
    (absent, or what --overwrite replaced), so a rerun starts from the same state. Killed between the last
    two steps, the outputs are there and ``target`` is not yet: a rerun with --overwrite redoes them.
    """
    target = Path(target)
    outputs = [Path(p) for p in outputs]
    previous = {p: p.read_bytes() for p in outputs if p.is_file()}
    tmp = temp_path(target)
    try:
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise write_error(target, exc) from None
        write_outputs()
        try:
            (rename or os.replace)(tmp, target)
        except OSError as exc:
            raise write_error(target, exc) from None
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        for p in outputs:
            with contextlib.suppress(Exception):
                if p in previous:
                    write_bytes_atomic(p, previous[p])
                else:
                    p.unlink(missing_ok=True)
        raise
