"""Run locks: a second process fails at once naming the holder; a dead holder's lock is taken over."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from ebmlens._lock import LockHeld, RunLock, read_holder


def test_second_holder_fails_naming_the_first(tmp_path):
    p = tmp_path / "out" / ".lock"
    with RunLock(p, what="ebmlens sample"):
        rec = read_holder(p)
        assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname()
        with pytest.raises(LockHeld, match=rf"in use by pid {os.getpid()} on .*ebmlens sample"):
            RunLock(p).acquire()
    assert not p.exists()
    with RunLock(p):  # free again after release
        pass


def test_lock_held_by_another_live_process(tmp_path):
    p = tmp_path / ".lock"
    code = textwrap.dedent(f"""
        import sys, time
        from ebmlens._lock import RunLock
        with RunLock({str(p)!r}, what="holder"):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"pid {proc.pid}"):
            RunLock(p).acquire()
    finally:
        proc.communicate("\n", timeout=30)
    with RunLock(p):
        pass


def test_stale_lock_of_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    p = tmp_path / ".lock"
    p.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "earlier", "what": "crashed run"}))
    with caplog.at_level(logging.WARNING, logger="ebmlens._lock"):
        with RunLock(p) as lock:
            assert lock.held and read_holder(p)["pid"] == os.getpid()
    assert any(f"pid {pid}" in r.getMessage() for r in caplog.records)


def test_stale_lock_with_our_own_pid_is_taken_over_with_a_warning(tmp_path, caplog):
    """kill -9, then --resume in a fresh container or job step: the new process often gets the dead one's pid;
    the warning must still appear (issue 22 item 4: it never did)."""
    p = tmp_path / ".lock"
    p.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "earlier", "what": "killed"}))
    with caplog.at_level(logging.WARNING, logger="ebmlens._lock"):
        with RunLock(p):
            pass
    assert any("taking over the lock" in r.getMessage() and "since earlier" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ebmlens._lock"):
        with RunLock(p):  # a lock released normally leaves nothing behind: no warning
            pass
    assert not caplog.records
