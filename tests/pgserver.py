"""A throwaway PostgreSQL server for the tests: ``initdb`` into a temporary folder,
``pg_ctl start`` listening only on a Unix socket in that folder (no TCP port, so
nothing clashes with other servers), stopped and deleted on exit.

The server binaries are looked up in ``$PG_BINDIR``, on ``PATH``, then in
``/usr/lib/postgresql/*/bin`` (Debian) and ``/usr/local/pgsql/bin``.  PostgreSQL
refuses to run as root: as root, the server runs as the ``postgres`` user (or
``nobody``) through ``runuser``.

Run it by hand to get a server for a shell (``python tests/pgserver.py``
prints the connection string and waits for Ctrl-C).
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time

__all__ = ["PostgresServer", "find_bindir"]


def find_bindir() -> str | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or ``None`` when PostgreSQL is not installed."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(os.path.dirname(initdb))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    candidates.append("/usr/local/pgsql/bin")
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "initdb")) and os.path.isfile(os.path.join(folder, "pg_ctl")):
            return folder
    return None


def _server_user() -> str | None:
    """As root: the unprivileged user to run the server as (``None`` when not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL")


class PostgresServer:
    """A PostgreSQL server in a temporary folder (a context manager)."""

    PORT = 5432  # only names the socket file: the server listens on no TCP port

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.folder = tempfile.mkdtemp(prefix="reflux-pg-")
        self.data = os.path.join(self.folder, "data")
        self.user = _server_user()
        self.started = False

    @property
    def conninfo(self) -> str:
        """libpq connection string of the server's ``postgres`` database."""
        return f"host={self.folder} port={self.PORT} user=postgres dbname=postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> PostgresServer:
        if self.user is not None:
            info = pwd.getpwnam(self.user)
            os.chown(self.folder, info.pw_uid, info.pw_gid)
        proc = self._run(os.path.join(self.bindir, "initdb"), "-D", self.data, "-A", "trust", "-U", "postgres",
                         "--no-sync", "-E", "UTF8")
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed: {proc.stdout}{proc.stderr}")
        opts = (f"-c listen_addresses='' -c unix_socket_directories='{self.folder}' -p {self.PORT} "
                f"-c max_connections=50 -c shared_buffers=32MB")
        proc = self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-o", opts,
                         "-l", os.path.join(self.folder, "server.log"), "-w", "-t", "60", "start")
        if proc.returncode != 0:
            log = ""
            try:
                with open(os.path.join(self.folder, "server.log")) as f:
                    log = f.read()[-2000:]
            except OSError:
                pass
            raise RuntimeError(f"pg_ctl start failed: {proc.stdout}{proc.stderr}{log}")
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")
            self.started = False
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    found = find_bindir()
    if found is None:
        raise SystemExit("PostgreSQL server binaries (initdb, pg_ctl) not found")
    with PostgresServer(found) as server:
        print(server.conninfo, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
