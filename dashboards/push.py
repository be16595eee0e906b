"""`gpuscope dashboards push`: uploads the dashboards through Grafana's HTTP API.

The API token comes from a file (`--token-file`) or the GPUSCOPE_GRAFANA_TOKEN environment
variable, never from the command line (it would show in `ps`). Every dashboard goes into one
folder and overwrites its previous version by uid. Problems come back as one line: Grafana
unreachable, the token refused, a Grafana too old for the panel types used.
"""

from __future__ import annotations

import os

import requests

from alerts.settings import Settings
from dashboards.build import dashboard_json

MIN_GRAFANA_MAJOR = 9  # time series, state timeline and the v9 alerting the provisioning file uses
TIMEOUT = 15


class PushError(RuntimeError):
    """A push problem, phrased as one line for the operator."""


def read_token(token_file: str, environ: dict[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise PushError(f"--token-file {token_file}: cannot read: {exc.strerror}") from None
    else:
        token = environ.get("GPUSCOPE_GRAFANA_TOKEN", "").strip()
    if not token:
        raise PushError("no Grafana API token: give --token-file or set GPUSCOPE_GRAFANA_TOKEN")
    return token


def push(url: str, token: str, folder: str = "gpuscope", settings: Settings | None = None) -> list[str]:
    """Uploads every dashboard built for the settings (defaults if none); returns their URLs in Grafana."""
    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    base = url.rstrip("/")
    _check_version(session, base)
    _ensure_folder(session, base, folder)
    urls = []
    for dashboard in dashboard_json(settings).values():
        body = _call(session, "POST", f"{base}/api/dashboards/db",
                     {"dashboard": {**dashboard, "id": None}, "folderUid": folder, "overwrite": True,
                      "message": "gpuscope dashboards push"})
        urls.append(base + body.get("url", f"/d/{dashboard['uid']}"))
    return urls


def _call(session: requests.Session, method: str, url: str, body: dict | None = None,
          allowed: tuple[int, ...] = ()) -> dict:
    try:
        response = session.request(method, url, json=body, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise PushError(f"cannot reach Grafana at {url}: {type(exc).__name__}") from None
    if response.status_code in (401, 403):
        raise PushError(f"Grafana refused the API token (HTTP {response.status_code} on {url}): it needs the "
                        "Editor role on the folder, or Admin to create it")
    if response.status_code >= 400 and response.status_code not in allowed:
        raise PushError(f"Grafana answered HTTP {response.status_code} on {url}: {response.text[:200]}")
    try:
        return response.json() if response.content else {}
    except ValueError:
        raise PushError(f"{url} did not answer JSON: is this a Grafana URL?") from None


def _check_version(session: requests.Session, base: str) -> None:
    version = str(_call(session, "GET", f"{base}/api/health").get("version", ""))
    major = version.split(".")[0]
    if not major.isdigit():
        raise PushError(f"{base}/api/health gave no Grafana version: is this a Grafana URL?")
    if int(major) < MIN_GRAFANA_MAJOR:
        raise PushError(f"Grafana {version} is too old for these dashboards: {MIN_GRAFANA_MAJOR}.0 or newer needed")


def _ensure_folder(session: requests.Session, base: str, folder: str) -> None:
    # 409/412: the folder exists already, which is fine.
    _call(session, "POST", f"{base}/api/folders", {"uid": folder, "title": folder}, allowed=(409, 412))
