"""An exclusive lock on a run directory, held for the life of a run (RL, ES, SFT, SAE).

The lock is `fcntl.flock` on `<run dir>/.lock`, a file that also records who holds it
(process id, host, start time, command line). The kernel drops an flock when its process dies,
however it dies, so a lock left by a killed run is stale by construction: the next run takes it
over (and says whose it was) instead of being refused. A second live run on the same directory
is refused with `RunLockedError` naming the holder, before it deletes or writes anything.

    with RunLock(run_dir):
        ...  # the whole run

On network file systems flock is as good as the server's lock support (NFSv4 implements it);
multi-host runs take the lock on the primary process only.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import warnings

from ..errors import JaxsteerError

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError"]

LOCK_FILE = ".lock"


class RunLockedError(JaxsteerError, RuntimeError):
    """Another live process holds the run directory's lock."""


def _describe(holder: dict) -> str:
    return f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('start', '?')}" + (
        f" ({holder['command']})" if holder.get("command") else ""
    )


class RunLock:
    """Exclusive, process-lifetime lock on `directory` (created if missing)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, LOCK_FILE)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> dict:
        """What the lock file says about its last holder ({} when there is none or it is unreadable)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.loads(f.read() or "{}")
        except (OSError, ValueError):
            return {}

    def check_free(self) -> None:
        """`RunLockedError` naming the holder if another live process holds the lock now; takes and
        writes nothing (a cheap early refusal before slow work; `acquire` still decides)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file (or an unreadable one: `acquire` reports it)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise self._locked() from None
            raise
        finally:
            os.close(fd)

    def _locked(self) -> RunLockedError:
        return RunLockedError(
            f"run directory {self.directory} is in use by {_describe(self.holder())}; "
            "wait for it to finish or choose another output_dir"
        )

    def acquire(self) -> RunLock:
        """Take the lock; `RunLockedError` naming the holder if another live process has it."""
        if self._fd is not None:
            return self
        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise self._locked() from None
            raise
        previous = self.holder()
        if previous:  # the file outlived its process: that run died without releasing it
            warnings.warn(f"taking over the stale lock of {self.directory} left by {_describe(previous)}", stacklevel=2)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up and clear the holder record (a clean exit leaves no stale record)."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
