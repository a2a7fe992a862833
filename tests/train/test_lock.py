"""The run-directory lock: a second live holder is refused by name; a dead holder's lock is taken over."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import warnings

import pytest

from jaxsteer.train.lock import LOCK_FILE, RunLock, RunLockedError

HOLD = textwrap.dedent(
    """
    import sys, time
    from jaxsteer.train.lock import RunLock
    lock = RunLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(600)
    """
)


def _holder_process(directory) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_is_refused_with_the_holders_name(tmp_path):
    proc = _holder_process(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=rf"in use by process {proc.pid} on host {socket.gethostname()}"):
            RunLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = _holder_process(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert RunLock(tmp_path).holder()["pid"] == proc.pid  # the record outlives the process...
    with pytest.warns(UserWarning, match=rf"stale lock .* process {proc.pid}"):
        lock = RunLock(tmp_path).acquire()  # ...but not its lock
    assert lock.held and lock.holder()["pid"] == os.getpid()
    lock.release()


def test_clean_release_leaves_no_stale_record_and_one_process_cannot_hold_twice(tmp_path):
    with RunLock(tmp_path) as lock:
        assert (tmp_path / LOCK_FILE).is_file() and lock.holder()["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match=f"process {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert RunLock(tmp_path).holder() == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # free again, and no warning about a stale lock
        with RunLock(tmp_path) as again:
            assert again.held
