"""Run locks: one process at a time writes a given set of sample indices.

A lock is a small file (``OUT/.lock`` for a whole run; a job-array task locks only its own index
block) holding the holder's pid, host and start time as JSON. Where ``fcntl`` exists the file is
also ``flock``-ed, so the operating system releases it when the holder dies however it dies;
elsewhere the file is created exclusively (``O_EXCL``). A second process fails at once with an
error that names the holder. A lock left by a dead process on this host is taken over with a
warning.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with RunLock(d / ".lock", what="run"):
...     (d / ".lock").exists()
True
>>> (d / ".lock").exists()
False
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
from pathlib import Path

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunLock", "LockHeld", "read_holder", "holder_alive", "held_by"]

log = logging.getLogger(__name__)


class LockHeld(ValueError):
    """Another live process holds the lock."""


def read_holder(path: str | os.PathLike) -> dict | None:
    """The holder record in a lock file (``{"pid", "host", "since", "what"}``), or None."""
    try:
        text = Path(path).read_text()
        rec = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def holder_alive(rec: dict | None) -> bool | None:
    """True/False when the holder is a process on this host (alive or not); None when unknown
    (another host, or no record)."""
    if not rec or rec.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(rec["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def held_by(path: str | os.PathLike) -> dict | None:
    """Whether a live process holds the lock ``path``, without taking it: the holder's record (``{}``
    when unreadable), or ``None`` when the lock is free. Probes with a shared ``flock``, so several
    processes may check at once without refusing each other."""
    path = Path(path)
    if fcntl is None:  # pragma: no cover - Windows: the file exists while held
        rec = read_holder(path)
        return None if not path.exists() or holder_alive(rec) is False else (rec or {})
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return read_holder(path) or {}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def describe_holder(path: Path, rec: dict | None) -> str:
    """``OUT is in use by pid P on HOST (since T, what)``: the words of a refusal."""
    return _describe(path, rec)


def _describe(path: Path, rec: dict | None) -> str:
    if not rec:
        return f"{path} is locked by another process"
    return (f"{path.parent} is in use by pid {rec.get('pid')} on {rec.get('host')} "
            f"(since {rec.get('since')}, {rec.get('what', 'a run')})")


class RunLock:
    """Exclusive lock on ``path``; a context manager (``acquire`` / ``release`` also work).

    Args:
        path: the lock file, e.g. ``OUT/.lock``.
        what: a few words recorded for the error a second process sees (e.g. ``"ebmlens sample"``).
    """

    def __init__(self, path: str | os.PathLike, *, what: str = "an ebmlens run") -> None:
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def _record(self) -> bytes:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now, "what": self.what}).encode()

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # retry when the file is replaced under us (a release + new holder)
            fd = self._try_acquire()
            if fd is None:
                continue
            self._fd = fd
            return self
        raise LockHeld(_describe(self.path, read_holder(self.path)))

    def _try_acquire(self) -> int | None:
        if fcntl is None:  # pragma: no cover - exercised on Windows only
            return self._acquire_exclusive_create()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LockHeld(_describe(self.path, read_holder(self.path))) from None
        try:  # the file we locked must still be the one at the path
            if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                raise FileNotFoundError
        except FileNotFoundError:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            return None
        old = read_holder(self.path)
        if old:  # a holder unlinks the file before it unlocks: a record left behind is a dead holder's (its pid may
            # equal ours: a fresh container or job step often starts its process under the same pid)
            log.warning("taking over the lock %s left by pid %s on %s (since %s; the process is gone)", self.path,
                        old.get("pid"), old.get("host"), old.get("since"))
        os.ftruncate(fd, 0)
        os.write(fd, self._record())
        os.fsync(fd)
        return fd

    def _acquire_exclusive_create(self) -> int | None:  # pragma: no cover - no fcntl
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            rec = read_holder(self.path)
            if rec is not None and holder_alive(rec) is False:
                log.warning("taking over the lock %s left by dead pid %s", self.path, rec.get("pid"))
                self.path.unlink(missing_ok=True)
                return None
            raise LockHeld(_describe(self.path, rec)) from None
        os.write(fd, self._record())
        return fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
