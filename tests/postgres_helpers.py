"""A throwaway PostgreSQL cluster for tests: `initdb` in a temporary folder, a server on
127.0.0.1 at a free port (and a Unix socket in that folder), stopped with `pg_ctl stop -m
fast` and checked gone by the postmaster's pid and start time.

Host connections need a password (scram-sha-256), so a URL's password is really used; the
Unix socket trusts the superuser `postgres`, which the tests use to create roles and
databases. initdb refuses to run as root: as root, the cluster runs as the `postgres` user
in a folder that user owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.runtime.processes import proc_stat, start_time
from tasks.runtime.services import free_port

SUPERUSER = "postgres"
START_TIMEOUT_S = 60


def postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl: from PATH, else Debian's newest version."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    return versions[-1].parent if versions else None


def unavailable_reason() -> str | None:
    """Why no throwaway cluster can run here, or None when one can."""
    if postgres_bin() is None:
        return "PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root, and there is no `postgres` user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root, and `runuser` is not installed"
    return None


@dataclass(frozen=True)
class Cluster:
    folder: Path  # data/, server.log and the Unix socket
    port: int
    pid: int  # the postmaster
    start: int  # its start time in clock ticks: (pid, start) names it for ever

    def url(self, user: str, password: str, database: str) -> str:
        """A URL over TCP on 127.0.0.1 (password authentication)."""
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def admin(self, *statements: str, database: str = "postgres") -> list[tuple]:
        """Run statements as the superuser over the Unix socket (autocommit, so CREATE
        DATABASE works); returns the last one's rows."""
        import psycopg2

        connection = psycopg2.connect(
            host=str(self.folder), port=self.port, user=SUPERUSER, dbname=database
        )
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                rows: list[tuple] = []
                for statement in statements:
                    cursor.execute(statement)
                    rows = cursor.fetchall() if cursor.description else []
                return rows
        finally:
            connection.close()

    def add_role(self, user: str, password: str, *options: str) -> None:
        """A login role with a password, e.g. add_role("marble", "pw", "CREATEDB")."""
        self.admin(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}' {' '.join(options)}")

    def add_database(self, name: str, owner: str) -> None:
        self.admin(f'CREATE DATABASE "{name}" OWNER "{owner}"')

    def databases(self) -> set[str]:
        return {row[0] for row in self.admin("SELECT datname FROM pg_database")}


def _as_server_user(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a PostgreSQL program, as `postgres` when we are root (initdb refuses root)."""
    prefix = ["runuser", "-u", SUPERUSER, "--"] if os.geteuid() == 0 else []
    done = subprocess.run(
        prefix + argv, cwd=cwd, capture_output=True, text=True, timeout=START_TIMEOUT_S + 30
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed:\n{done.stdout}\n{done.stderr}")
    return done


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        fields = proc_stat(entry) if entry.isdigit() else None
        if fields is not None and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _wait_gone(pids: dict[int, int], timeout_s: float) -> dict[int, int]:
    """Wait until none of {pid: start time} runs; returns those still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = {pid: start for pid, start in pids.items() if start_time(pid) == start}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """Start a cluster in a new temporary folder; stop it and remove the folder on exit."""
    bin_dir = postgres_bin()
    assert bin_dir is not None, unavailable_reason()
    # /tmp itself, not pytest's tmp_path: as root, that folder is closed to `postgres`
    folder = Path(tempfile.mkdtemp(prefix="marble-pg-"))
    cluster = None
    try:
        if os.geteuid() == 0:
            server_user = pwd.getpwnam(SUPERUSER)
            os.chown(folder, server_user.pw_uid, server_user.pw_gid)
        data = folder / "data"
        _as_server_user(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-E", "UTF8",
             "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions"],
            folder,
        )  # fmt: skip
        port = free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} "
            "-c fsync=off -c full_page_writes=off -c max_connections=100"
        )
        _as_server_user(
            [str(bin_dir / "pg_ctl"), "start", "-D", str(data), "-l", str(folder / "server.log"),
             "-o", options, "-w", "-t", str(START_TIMEOUT_S)],
            folder,
        )  # fmt: skip
        pid = int((data / "postmaster.pid").read_text().split()[0])
        cluster = Cluster(folder, port, pid, start_time(pid))
        yield cluster
    finally:
        if cluster is not None:
            _stop(cluster, bin_dir)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(cluster: Cluster, bin_dir: Path) -> None:
    """pg_ctl stop -m fast; then the postmaster and its children must be gone (killed if
    they are not)."""
    started = {cluster.pid: cluster.start}
    for child in _children(cluster.pid):
        child_start = start_time(child)
        if child_start is not None:
            started[child] = child_start
    try:
        _as_server_user(
            [str(bin_dir / "pg_ctl"), "stop", "-D", str(cluster.folder / "data"), "-m", "fast",
             "-w", "-t", "30"],
            cluster.folder,
        )  # fmt: skip
    except (RuntimeError, subprocess.TimeoutExpired):
        pass  # the check below kills what is left
    left = _wait_gone(started, timeout_s=10)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    left = _wait_gone(left, timeout_s=10)
    assert not left, f"PostgreSQL processes still running: {sorted(left)}"
