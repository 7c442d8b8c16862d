"""The whole service on one machine: receiver and worker processes wired to a Medplum (the
stand-in or any other) and a PostgreSQL. Used by ``make demo``, the integration tests and the
benchmarks; they run the same commands production runs (``starvit serve``, ``starvit worker``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

from devtools.devserver import (
    PROJECT_ROOT,
    SERVICE_CLIENT_ID,
    SERVICE_CLIENT_SECRET,
    die_with_parent,
)

STARVIT = Path(sys.executable).parent / "starvit"
DEV_WEBHOOK_SECRET = "starvit-dev-webhook-secret"  # noqa: S105 - development value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list[str])

    def pump(self, stream: IO[str]) -> None:
        def run() -> None:
            for line in stream:
                self.output.append(line.rstrip())
                if len(self.output) > 5000:
                    del self.output[:2500]

        threading.Thread(target=run, daemon=True).start()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL, timeout=10)


@dataclass
class Stack:
    """``Stack(medplum_base_url=..., database_url=...)``; ``start_receiver()``,
    ``start_worker()``; ``close()`` stops what it started."""

    medplum_base_url: str
    database_url: str
    webhook_secret: str = DEV_WEBHOOK_SECRET
    receiver_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict[str, str])
    processes: list[ServiceProcess] = field(default_factory=list[ServiceProcess])

    @property
    def receiver_base(self) -> str:
        return f"http://127.0.0.1:{self.receiver_port}"

    @property
    def receiver_url(self) -> str:
        return f"{self.receiver_base}/v1/medplum/notifications"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "STARVIT_DATABASE_URL": self.database_url,
            "STARVIT_WEBHOOK_SECRETS": self.webhook_secret,
            "STARVIT_MEDPLUM_BASE_URL": self.medplum_base_url,
            "STARVIT_MEDPLUM_CLIENT_ID": SERVICE_CLIENT_ID,
            "STARVIT_MEDPLUM_CLIENT_SECRET": SERVICE_CLIENT_SECRET,
            "STARVIT_RECEIVER_URL": self.receiver_url,
            "STARVIT_ENVIRONMENT": "development",
            **self.extra_env,
        }

    def _spawn(self, name: str, args: list[str]) -> ServiceProcess:
        process = subprocess.Popen(  # noqa: S603 - our own console script
            [str(STARVIT), *args],
            cwd=PROJECT_ROOT,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, no threads involved
        )
        service = ServiceProcess(name, process)
        assert process.stdout is not None
        service.pump(process.stdout)
        self.processes.append(service)
        return service

    def start_receiver(self, workers: int = 1, timeout: float = 60) -> ServiceProcess:
        service = self._spawn(
            "receiver", ["serve", "--port", str(self.receiver_port), "--workers", str(workers)]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not service.alive():
                raise RuntimeError("receiver exited:\n" + "\n".join(service.output[-30:]))
            try:
                with urllib.request.urlopen(self.receiver_base + "/readyz", timeout=2) as answer:  # noqa: S310
                    if answer.status == 200:
                        return service
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("receiver not ready:\n" + "\n".join(service.output[-30:]))

    def start_worker(self, concurrency: int = 4, processes: int = 1) -> ServiceProcess:
        service = self._spawn(
            "worker", ["worker", "--concurrency", str(concurrency), "--processes", str(processes)]
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # Every process of the supervisor has started (each logs its own line).
            if sum("worker_started" in line for line in service.output) >= processes:
                return service
            if not service.alive():
                raise RuntimeError("worker exited:\n" + "\n".join(service.output[-30:]))
            time.sleep(0.05)
        raise RuntimeError("worker did not start:\n" + "\n".join(service.output[-30:]))

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a one-off ``starvit`` command against this stack (``sweep``, ``jobs list``...)."""
        return subprocess.run(  # noqa: S603 - our own console script
            [str(STARVIT), *args],
            cwd=PROJECT_ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def close(self) -> None:
        for service in reversed(self.processes):
            service.stop()
        self.processes.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
