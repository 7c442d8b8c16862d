"""The processes a benchmark runs: PostgreSQL (the embedded server in ``var/bench-pgdata``, a
fresh database per scenario), the Medplum stand-in, the bare baseline under Gunicorn, and the
service's own processes through :class:`devtools.stack.Stack`; plus their resource usage
read from ``/proc`` through psutil."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psutil

from app.cli.main import GUNICORN_FLAGS
from app.persistence import embedded
from devtools.databases import scratch_database
from devtools.devserver import PROJECT_ROOT
from devtools.stack import ServiceProcess, Stack, free_port

if TYPE_CHECKING:
    pass

BENCH_PG_DIR = PROJECT_ROOT / "var" / "bench-pgdata"


@dataclass
class Postgres:
    server_url: str
    started_here: bool

    @classmethod
    def start(cls) -> Postgres:
        server, started = embedded.ensure_running(BENCH_PG_DIR)
        return cls(server.url, started)

    def fresh_database(self, label: str) -> contextlib.AbstractContextManager[str]:
        return scratch_database(self.server_url, f"bench_{label}")

    def stop(self) -> None:
        if self.started_here:
            embedded.stop(BENCH_PG_DIR)

    def pid(self) -> int | None:
        try:
            return int((BENCH_PG_DIR / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None


def wait_http_ok(url: str, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - loopback
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 in {timeout} s")


def start_baseline(workers: int) -> tuple[ServiceProcess, int]:
    """The bare app under Gunicorn + Uvicorn worker with the receiver's flags."""
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - this interpreter, fixed arguments
        [
            sys.executable,
            "-m",
            "gunicorn",
            "benchmarks.baseline:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            *GUNICORN_FLAGS,
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    service = ServiceProcess("baseline", process)
    assert process.stdout is not None
    service.pump(process.stdout)
    wait_http_ok(f"http://127.0.0.1:{port}/readyz", process)
    return service, port


def close_stack(stack: Stack) -> None:
    """``stack.close()``, then end whatever it left behind of the processes it started.

    ``starvit worker --processes N`` forks N children; SIGTERM to the parent ends the parent
    only, and the children run on as orphans (a service bug reported in docs/benchmarks.md).
    The descendants are collected before the stop and ended by their pids afterwards.
    """
    descendants: list[psutil.Process] = []
    for service in stack.processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            descendants.extend(psutil.Process(service.process.pid).children(recursive=True))
    stack.close()
    for process in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _gone, alive = psutil.wait_procs(descendants, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


# ---------------------------------------------------------------------- resource usage


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants."""
    total = 0.0
    for process in tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def peak_rss_mb(pid: int) -> dict[int, float]:
    """Peak resident set (``VmHWM``) of each process in the tree, in MB."""
    peaks: dict[int, float] = {}
    for process in tree(pid):
        try:
            with open(f"/proc/{process.pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        peaks[process.pid] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return peaks


@dataclass
class CpuMeter:
    """CPU seconds used by some process trees between ``start()`` and ``stop()``."""

    pids: dict[str, int]
    started: dict[str, float] = field(default_factory=dict[str, float])
    used: dict[str, float] = field(default_factory=dict[str, float])
    wall_started: float = 0.0
    wall: float = 0.0

    def start(self) -> None:
        self.wall_started = time.monotonic()
        self.started = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> None:
        self.wall = time.monotonic() - self.wall_started
        self.used = {
            name: cpu_seconds(pid) - self.started.get(name, 0.0) for name, pid in self.pids.items()
        }


def machine() -> dict[str, str | int | float]:
    memory_kb = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count() or 0,
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "cpu_model": model,
        "python": sys.version.split()[0],
    }
