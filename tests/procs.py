"""Real exporter processes for tests: started with flags, ready when /-/healthy answers, stopped cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import requests
import yaml

from tests.helpers import free_port


def run_gpuscope(*args: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    """`gpuscope ARGS` to completion, through the console script's entry point."""
    return subprocess.run([sys.executable, "-c", "import sys; from gpuscope.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    """`gpuscope exporter ARGS` (the daemon) to completion, for runs expected to exit."""
    return subprocess.run([sys.executable, "-m", "gpuscope", "exporter", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@contextmanager
def exporter_process(*args: str, scheme: str = "http", verify=None, user: int | None = None,
                     command: Sequence[str] = (sys.executable, "-m", "gpuscope", "exporter"),
                     **request_kwargs) -> Iterator[str]:
    """Starts `gpuscope exporter` (this checkout's, or `command`, e.g. an installed console script's)
    on a free loopback port and yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [*command, f"--web.listen-address=127.0.0.1:{port}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, user=user)
    base = f"{scheme}://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, base, verify, request_kwargs)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("exporter did not stop on SIGTERM") from None
        assert proc.returncode == 0, f"exporter exited {proc.returncode}: {err}"


def _wait_healthy(proc: subprocess.Popen, base: str, verify, request_kwargs: dict) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exporter exited {proc.returncode}: {proc.stderr.read()}")
        try:
            requests.get(f"{base}/-/healthy", timeout=1, verify=verify if verify is not None else True,
                         **request_kwargs)
            return
        except requests.RequestException:
            time.sleep(0.05)
    raise AssertionError("exporter did not come up within 15 s")


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def receiver_process(tmp_path, policy: dict, *args: str, env: dict[str, str] | None = None,
                     token: str = "") -> Iterator[str]:
    """`gpuscope remediate` with this policy (audit log and state in tmp_path) on a free loopback
    port, started as a user would; yields its base URL once /-/healthy answers."""
    path = tmp_path / "policy.yml"
    path.write_text(yaml.safe_dump({"audit_log": str(tmp_path / "audit.jsonl"),
                                    "state_file": str(tmp_path / "state.json"), **policy}))
    port = free_port()
    cli = [sys.executable, "-c", "import sys; from gpuscope.cli import main; sys.exit(main())"]
    process = subprocess.Popen([*cli, "remediate", f"--policy={path}", f"--web.listen-address=127.0.0.1:{port}",
                                *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, f"remediate exited: {process.stderr.read()}"
            try:
                if requests.get(f"{base}/-/healthy", timeout=1, headers=headers).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "remediate did not come up within 15 s"
            time.sleep(0.1)
        yield base
    finally:
        stop(process)
