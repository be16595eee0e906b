"""The systemd unit (verify, security exposure), the install script, and sd_notify readiness."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import requests

from tests.helpers import REPO, free_port

UNIT = REPO / "deploy" / "systemd" / "gpuscope.service"
RECEIVER_UNIT = REPO / "deploy" / "remediate" / "gpuscope-remediate.service"
INSTALL = REPO / "deploy" / "systemd" / "install.sh"


def analyze(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("systemd-analyze")
    assert binary, "systemd-analyze missing: scripts/test installs Debian's systemd package"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("unit", [UNIT, RECEIVER_UNIT], ids=lambda p: p.name)
def test_unit_verifies_without_a_warning(tmp_path, unit):
    """`verify` also checks that ExecStart exists; on a test machine it does not, so that one path is
    pointed at a stub executable. Every other line is the shipped unit's."""
    stub = tmp_path / "gpuscope"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    text = unit.read_text()
    assert text.count("/opt/gpuscope/venv/bin/gpuscope ") == 1
    (tmp_path / unit.name).write_text(text.replace("/opt/gpuscope/venv/bin/gpuscope ", f"{stub} "))
    result = analyze("verify", str(tmp_path / unit.name))
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stdout + result.stderr


@pytest.mark.parametrize(("unit", "limit"), [(UNIT, 2.0), (RECEIVER_UNIT, 1.5)], ids=lambda p: getattr(p, "name", p))
def test_unit_exposure(unit, limit):
    """The exporter needs CAP_SYSLOG and the GPU devices; the receiver needs neither."""
    result = analyze("security", "--offline=true", str(unit))
    match = re.search(rf"Overall exposure level for {unit.name}: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= limit


@pytest.mark.e2e
def test_install_script_places_unit_and_flags_and_uninstalls(tmp_path):
    calls = tmp_path / "systemctl.log"
    fake = tmp_path / "systemctl"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    fake.chmod(0o755)
    env = {**os.environ, "ROOT": str(tmp_path / "root"), "SYSTEMCTL": str(fake), "PIP": "true"}
    result = subprocess.run(["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    root = tmp_path / "root"
    assert (root / "etc/systemd/system/gpuscope.service").read_text() == UNIT.read_text()
    assert "GPUSCOPE_ARGS=" in (root / "etc/default/gpuscope").read_text()
    assert (root / "opt/gpuscope/venv/bin/python").exists()
    assert calls.read_text().splitlines() == ["daemon-reload", "enable --now gpuscope.service"]
    (root / "etc/default/gpuscope").write_text('GPUSCOPE_ARGS="--log.level=debug"\n')
    subprocess.run(["bash", str(INSTALL)], env=env, check=True, capture_output=True, timeout=120)
    assert "debug" in (root / "etc/default/gpuscope").read_text()  # an existing flags file is kept
    result = subprocess.run(["bash", str(INSTALL), "--uninstall"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert not (root / "etc/systemd/system/gpuscope.service").exists() and not (root / "opt/gpuscope").exists()
    assert (root / "etc/default/gpuscope").exists()


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(20)
    yield path, sock
    sock.close()


def test_exporter_announces_readiness_and_stopping(notify_socket, tmp_path):
    path, sock = notify_socket
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gpuscope", "exporter", f"--web.listen-address=127.0.0.1:{port}",
                             f"--path.sysfs={tmp_path}", "--no-collector.gpu"],
                            env={**os.environ, "NOTIFY_SOCKET": path},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert sock.recv(256) == b"READY=1"
        # READY=1 comes after the first collection: the exporter is ready, and serving.
        assert requests.get(f"http://127.0.0.1:{port}/-/ready", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(256) == b"STOPPING=1"
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
