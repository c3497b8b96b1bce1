"""A real STAC API on 127.0.0.1 for tests: PostgreSQL + pgstac, served by stac-fastapi-pgstac.

pgstac is what many production catalogs run (Planetary Computer among them),
so paging, ``query``, ``filter`` and ``sortby`` behave here as they do there.
Needs the Debian packages ``postgresql`` and ``postgresql-15-postgis-3`` and
the Python packages of the project's ``test`` extra.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import requests

from catalog.pgstac_load import load_into_pgstac

START_TIMEOUT_S = 30.0


def find_postgres_bin() -> Path | None:
    """Return the folder with ``initdb``/``pg_ctl`` of the newest PostgreSQL with PostGIS, or ``None``."""
    for bin_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        version = Path(bin_dir).parent.name
        has_postgis = glob.glob(f"/usr/share/postgresql/{version}/extension/postgis.control")
        if (Path(bin_dir) / "initdb").is_file() and has_postgis:
            return Path(bin_dir)
    return None


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgstacServer:
    """PostgreSQL with pgstac and a stac-fastapi-pgstac app, both on 127.0.0.1 ports of their own."""

    def __init__(self, workdir: Path, bin_dir: Path) -> None:
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.db_port = free_port()
        self.api_port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.db_port}/postgres"
        self.url = f"http://127.0.0.1:{self.api_port}"
        self._api: subprocess.Popen[bytes] | None = None
        # PostgreSQL refuses to run as root; run it as the Debian "postgres" user then.
        self._as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as_user, *args], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed with exit code {result.returncode}: {result.stderr.strip()}")

    def start_database(self) -> None:
        """Create a throw-away cluster, start it and install the pgstac schema."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._as_user:
            postgres = pwd.getpwnam("postgres")
            os.chown(self.workdir, postgres.pw_uid, postgres.pw_gid)
        data = self.workdir / "data"
        self._run(str(self.bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = (
            f"-p {self.db_port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.workdir / "postgres.log"), "-w", "start")

        from pypgstac.db import PgstacDB
        from pypgstac.migrate import Migrate

        with PgstacDB(dsn=self.dsn) as db:
            Migrate(db).run_migration()
            # Without "context", pgstac leaves numberMatched out of search results.
            db.query_one("INSERT INTO pgstac.pgstac_settings (name, value) VALUES ('context', 'on') "
                         "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value RETURNING name")

    def load(self, items: Iterable[dict[str, Any]]) -> None:
        """Insert items, and a collection per collection id, through the project's pgstac loader."""
        load_into_pgstac(list(items), self.dsn)

    def start_api(self) -> None:
        """Start stac-fastapi-pgstac under uvicorn and wait until it responds."""
        env = {
            **os.environ,
            "STAC_FASTAPI_TITLE": "fleximo test catalog", "STAC_FASTAPI_DESCRIPTION": "pgstac test server",
            "STAC_FASTAPI_LANDING_ID": "fleximo-test", "STAC_FASTAPI_VERSION": "test",
            "PGUSER": "postgres", "PGPASSWORD": "unused", "PGHOST": "127.0.0.1",
            "PGPORT": str(self.db_port), "PGDATABASE": "postgres",
            "POSTGRES_USER": "postgres", "POSTGRES_PASS": "unused", "POSTGRES_HOST_READER": "127.0.0.1",
            "POSTGRES_HOST_WRITER": "127.0.0.1", "POSTGRES_PORT": str(self.db_port), "POSTGRES_DBNAME": "postgres",
        }
        log = open(self.workdir / "api.log", "wb")  # noqa: SIM115 - closed with the process
        self._api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory", "--host", "127.0.0.1",
             "--port", str(self.api_port), "--log-level", "warning"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._api.poll() is not None:
                raise RuntimeError(f"stac-fastapi-pgstac exited with {self._api.returncode}: {self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/conformance", timeout=2).ok:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"stac-fastapi-pgstac did not answer within {START_TIMEOUT_S} s: {self.log_tail()}")

    def log_tail(self) -> str:
        """Return the end of the API server log, for error messages."""
        path = self.workdir / "api.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        """Stop the API and the database, and remove the cluster."""
        if self._api is not None and self._api.poll() is None:
            self._api.terminate()
            try:
                self._api.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._api.kill()
        data = self.workdir / "data"
        if data.exists():
            with contextlib.suppress(RuntimeError):
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def running_pgstac(workdir: Path, items: Iterable[dict[str, Any]]) -> Iterator[PgstacServer]:
    """Run a loaded pgstac STAC API for the duration of the ``with`` block."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL with PostGIS not found under /usr/lib/postgresql")
    server = PgstacServer(workdir, bin_dir)
    try:
        server.start_database()
        server.load(items)
        server.start_api()
        yield server
    finally:
        server.stop()
