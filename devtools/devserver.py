"""Start and stop the local Medplum stand-in (``devserver/``, Node 22 from its lock file)."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEVSERVER_DIR = PROJECT_ROOT / "devserver"
NODE = DEVSERVER_DIR / "node_modules" / ".bin" / "node"
_LISTENING = re.compile(r"listening on (http://\S+/)")

# Development-only credentials from devserver/seed.json (clearly not secrets).
SERVICE_CLIENT_ID = "starvit-service"
SERVICE_CLIENT_SECRET = "starvit-dev-service-secret"  # noqa: S105 - development seed value
PARTNER_CLIENT_ID = "partner-acme"
PARTNER_CLIENT_SECRET = "partner-acme-dev-secret"  # noqa: S105 - development seed value
ADMIN_CLIENT_ID = "ops-admin"
ADMIN_CLIENT_SECRET = "ops-admin-dev-secret"  # noqa: S105 - development seed value
CLINICIAN_APP_CLIENT_ID = "starvit-clinician-app"


class DevServerError(RuntimeError):
    pass


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when the process that started it dies, so a demo or a
    test run that is killed leaves no server behind."""
    import ctypes  # noqa: PLC0415
    import signal  # noqa: PLC0415

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def ensure_installed() -> None:
    if not NODE.exists():
        subprocess.run(
            ["npm", "ci", "--silent", "--no-audit", "--no-fund"],  # noqa: S607
            cwd=DEVSERVER_DIR,
            check=True,
        )


@dataclass
class DevServer:
    """A running stand-in. ``with DevServer.start() as server: server.base_url``."""

    process: subprocess.Popen[str]
    base_url: str
    output: list[str] = field(default_factory=list[str])

    @classmethod
    def start(
        cls, *, port: int = 0, env: dict[str, str] | None = None, timeout: float = 30.0
    ) -> Self:
        ensure_installed()
        environment = {**os.environ, "MEDPLUM_PORT": str(port), **(env or {})}
        process = subprocess.Popen(  # noqa: S603
            [str(NODE), "server.mjs"],
            cwd=DEVSERVER_DIR,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, no threads involved
        )
        assert process.stdout is not None
        deadline = time.monotonic() + timeout
        output: list[str] = []
        base_url = None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line.rstrip())
            match = _LISTENING.search(line)
            if match:
                base_url = match.group(1)
                break
        if base_url is None:
            process.kill()
            process.wait()
            raise DevServerError("the Medplum stand-in did not start:\n" + "\n".join(output[-20:]))
        server = cls(process=process, base_url=base_url, output=output)
        server._drain(process.stdout)
        server.wait_ready(deadline - time.monotonic())
        return server

    def _drain(self, stream: IO[str]) -> None:
        def pump() -> None:
            for line in stream:
                self.output.append(line.rstrip())
                if len(self.output) > 2000:
                    del self.output[:1000]

        threading.Thread(target=pump, daemon=True).start()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + max(timeout, 1.0)
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base_url + "healthcheck", timeout=2) as answer:  # noqa: S310
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise DevServerError("the Medplum stand-in did not answer /healthcheck")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
