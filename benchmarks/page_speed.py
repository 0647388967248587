"""Benchmark: server time and queries of the console pages with 100 cases and 10,000
sessions (the goal: under 200 ms, a bounded number of queries).

    .venv/bin/python benchmarks/page_speed.py [--repeat 20] [--postgres URL | --no-postgres]

Builds the records in a temporary SQLite database, and in a database of its own on the
PostgreSQL server at ``--postgres`` (default postgres://postgres@127.0.0.1:5432/postgres)
when it answers, dropped afterwards. Each backend runs in a child process, because Django
reads its database settings once. The dashboard, a case page and a session page are
requested through Django's test Client (the whole middleware stack, no network), as an LI
administrator (every case) and as an analyst assigned to 10 cases; each figure is the
best of ``--repeat`` requests, with the number of queries one request made. Wall time is
what a user waits for; this process's CPU time says how much of it is the page's own work
when the host is busy with other jobs (with SQLite it includes the queries; with
PostgreSQL the server's share is not in it). It prints
the figures; the tests assert the query counts, not the times.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CASES = 100
INTERCEPTS_PER_CASE = 2
SESSIONS = 10_000
ROUTERS = 10
ANALYST_CASES = 10


def build() -> dict[str, Any]:
    """The records; returns the users and the ids of the pages to time."""
    from django.contrib.auth.models import Group, User
    from django.utils import timezone

    from jmirror_web.intercepts.access import Role
    from jmirror_web.intercepts.models import (
        Case,
        CaseAssignment,
        Intercept,
        Listener,
        ReceiverProcess,
        Router,
        Session,
        UnclaimedStream,
    )

    now = timezone.now()
    routers = Router.objects.bulk_create(
        Router(name=f"bng-{n}", address=f"10.0.0.{n + 1}") for n in range(ROUTERS)
    )
    cases = Case.objects.bulk_create(
        Case(
            reference=f"CASE-{n:04d}",
            title=f"Warrant {n}",
            agency="Police",
            valid_from=now - timedelta(days=30),
            # A few warrants end within the day: the expiry alert has rows to show.
            valid_until=now + (timedelta(hours=5) if n % 20 == 0 else timedelta(days=60)),
            status=Case.Status.ACTIVE,
        )
        for n in range(CASES)
    )
    intercepts = Intercept.objects.bulk_create(
        Intercept(
            case=case,
            liid=f"LIID-{c}-{i}",
            intercept_id=c * INTERCEPTS_PER_CASE + i + 1,
            valid_from=case.valid_from,
            valid_until=case.valid_until,
        )
        for c, case in enumerate(cases)
        for i in range(INTERCEPTS_PER_CASE)
    )
    per_intercept = SESSIONS // len(intercepts)
    Session.objects.bulk_create(
        (
            Session(
                router=routers[s % ROUTERS],
                intercept=intercept,
                mid=intercept.intercept_id,
                sid=s,
                first_seen=now - timedelta(days=1, minutes=s),
                # One intercept in ten went quiet an hour ago: the silence alert has rows.
                last_seen=now - timedelta(minutes=60 if n % 10 == 0 else s % 5),
                packets=1000 + s,
                bytes=(1000 + s) * 400,
                stored_packets=1000 + s,
            )
            for n, intercept in enumerate(intercepts)
            for s in range(per_intercept)
        ),
        batch_size=1000,
    )
    UnclaimedStream.objects.bulk_create(
        UnclaimedStream(
            source=f"198.51.100.{n}",
            mid=0x9000 + n,
            sid=n,
            reason=UnclaimedStream.Reason.NO_INTERCEPT,
            packets=10,
            first_seen=now - timedelta(minutes=30),
            last_seen=now - timedelta(minutes=1),
        )
        for n in range(50)
    )
    receiver = ReceiverProcess.objects.create(
        hostname="mediation", pid=1, started_at=now, reported_at=now, store_errors={"ENOSPC": 1}
    )
    Listener.objects.create(receiver=receiver, address="0.0.0.0:30030", kernel_drops=12)

    admin = User.objects.create_user("li-admin")
    admin.groups.add(Group.objects.get(name=Role.LI_ADMIN.value))
    analyst = User.objects.create_user("analyst")
    analyst.groups.add(Group.objects.get(name=Role.ANALYST.value))
    CaseAssignment.objects.bulk_create(
        CaseAssignment(case=case, user=analyst) for case in cases[:ANALYST_CASES]
    )
    case = cases[0]
    session = Session.objects.filter(intercept__case=case).order_by("pk").first()
    assert session is not None
    return {
        "users": {"LI admin": admin, "analyst": analyst},
        "case": case.pk,
        "session": session.pk,
    }


def measure(repeat: int, profile: str | None) -> None:
    """Runs in the child process, with DATABASE_URL set to the database to fill."""
    import django

    django.setup()
    from django.core.management import call_command
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections, connection, connections
    from django.db.backends.signals import connection_created
    from django.test import Client
    from django.urls import reverse

    # One connection for the whole run, as a server with CONN_MAX_AGE keeps it: the test
    # Client would otherwise close it after each request (and its query log with it).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    call_command("migrate", verbosity=0)
    # Counted by an execute wrapper on every connection, whatever thread Django's handler
    # runs the view in (CaptureQueriesContext sees only this thread's connection).
    executed: list[str] = []

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        executed.append(sql)
        return execute(sql, params, many, context)

    def wrap(sender: Any, connection: Any, **kwargs: Any) -> None:
        if count not in connection.execute_wrappers:
            connection.execute_wrappers.append(count)

    connection_created.connect(wrap)
    for each in connections.all():
        wrap(None, each)
    started = time.perf_counter()
    built = build()
    print(
        f"{connection.vendor}: {CASES} cases, {CASES * INTERCEPTS_PER_CASE} intercepts, "
        f"{SESSIONS:,} sessions built in {time.perf_counter() - started:.1f} s"
    )
    pages = {
        "dashboard": reverse("home"),
        "case page": reverse("console:case", args=[built["case"]]),
        "session page": reverse("console:session", args=[built["session"]]),
    }
    for who, user in built["users"].items():
        client = Client()
        client.force_login(user)
        for name, url in pages.items():
            executed.clear()
            response = client.get(url)
            queries = list(executed)
            assert response.status_code == 200, (url, response.status_code)
            best = best_cpu = float("inf")
            for _ in range(repeat):
                start, start_cpu = time.perf_counter(), time.process_time()
                client.get(url)
                best = min(best, time.perf_counter() - start)
                best_cpu = min(best_cpu, time.process_time() - start_cpu)
            if profile and profile in (who, name):
                import cProfile
                import pstats

                profiler = cProfile.Profile()
                profiler.runcall(client.get, url)
                pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
            print(
                f"  {who:9} {name:13} {best * 1000:6.1f} ms wall {best_cpu * 1000:6.1f} ms CPU  "
                f"{len(queries):2d} queries  {len(response.content) / 1024:3.0f} KiB"
            )


def child(database_url: str, repeat: int, data_dir: str, profile: str | None) -> int:
    environ = dict(
        os.environ,
        DATABASE_URL=database_url,
        JMIRROR_DATA_DIR=data_dir,
        DJANGO_SETTINGS_MODULE="jmirror_web.settings",
        DJANGO_ALLOWED_HOSTS="testserver",
        JMIRROR_LOG_LEVEL="WARNING",
    )
    command = [sys.executable, __file__, "--child", "--repeat", str(repeat)]
    if profile:
        command += ["--profile", profile]
    return subprocess.run(command, env=environ, cwd=REPO).returncode


def postgres_database(url: str) -> tuple[str, Any] | None:
    """A fresh database on the server at ``url`` and a function that drops it, or None
    when the server does not answer."""
    try:
        import psycopg
    except ImportError:
        return None
    name = f"jmirror_page_speed_{os.getpid()}"
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as error:
        print(f"PostgreSQL at {url} does not answer ({error}); SQLite only")
        return None
    admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}")), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--profile", help="print a cProfile of one request: a page or user name")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        measure(options.repeat, options.profile)
        return
    failed = 0
    with tempfile.TemporaryDirectory(prefix="jmirror-page-speed-") as data_dir:
        Path(data_dir, "staticfiles").mkdir()  # WhiteNoise warns on each request without it
        sqlite = f"sqlite:///{Path(data_dir) / 'bench.sqlite3'}"
        failed |= child(sqlite, options.repeat, data_dir, options.profile)
        database = None if options.no_postgres else postgres_database(options.postgres)
        if database is not None:
            url, drop = database
            try:
                failed |= child(url, options.repeat, data_dir, options.profile)
            finally:
                drop()
    sys.exit(failed)


if __name__ == "__main__":
    main()
