"""Processes the engine tests start: worker pools, job services, a Flink cluster, pipeline runs.

Every process is started in its own session (process group), so stopping it also stops what it
spawned (SDK workers of a worker pool, the job server a FlinkRunner launches, Prism). Every wait
is bounded: a service that does not come up, or a pipeline that does not finish, fails the test
with the tail of its log instead of hanging CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PipelineRun",
    "Service",
    "free_port",
    "http_json",
    "port_open",
    "python_env",
    "run_pipeline_cli",
]

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def http_json(url: str, *, method: str = "GET", timeout: float = 5) -> object:
    request = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body else None


def python_env(**extra: str) -> dict[str, str]:
    """The environment for Beam Python processes: this interpreter's ``bin`` first on PATH.

    Beam's worker pool starts SDK workers as plain ``python``, so that must be this venv's.
    """
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env.update(extra)
    return env


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


class Service:
    """A background process with a log file, a readiness probe and a bounded start and stop."""

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        log_dir: Path,
        ready: Callable[[], bool],
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        start_timeout: float = 120,
    ) -> None:
        self.name = name
        self.cmd = [str(c) for c in cmd]
        self.log = log_dir / f"{name}.log"
        self._ready = ready
        self._cwd = cwd or log_dir
        self._env = env
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen | None = None
        self.port: int | None = None  # the port it serves on, when the caller wants to say

    def start(self) -> Service:
        log = self.log.open("ab")
        self._proc = subprocess.Popen(
            self.cmd,
            cwd=self._cwd,
            env=self._env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._proc.returncode} before it was ready:\n"
                    f"$ {' '.join(self.cmd)}\n{self.tail()}"
                )
            with contextlib.suppress(OSError, ValueError):
                if self._ready():
                    return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"{self.name} not ready after {self._start_timeout:.0f}s:\n"
            f"$ {' '.join(self.cmd)}\n{self.tail()}"
        )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return _tail(self.log, chars)

    def stop(self, timeout: float = 15) -> None:
        if self._proc is None:
            return
        _kill_group(self._proc.pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=timeout)
        _kill_group(self._proc.pid, signal.SIGKILL)  # children that outlived their parent
        self._proc = None


@dataclass
class PipelineRun:
    """The outcome of one ``python -m <pipeline>`` run."""

    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.cmd)}\nexit {self.returncode} after {self.seconds:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-2000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )


def run_pipeline_cli(
    module: str, args: Sequence[str], *, cwd: Path, timeout: float, env: dict | None = None
) -> PipelineRun:
    """``python -m module args`` in its own process group, killed whole after ``timeout``."""
    cmd = [sys.executable, "-m", module, *args]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env if env is not None else python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        returncode = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        stderr += f"\n*** killed: no result after {timeout:.0f}s ***"
        returncode = -9
    finally:
        # A runner that exits leaves nothing behind (a job server, Prism): make sure of it.
        _kill_group(proc.pid, signal.SIGKILL)
    return PipelineRun(cmd, returncode, stdout, stderr, time.monotonic() - start)
