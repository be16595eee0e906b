"""The exporter-toolkit `web-config.yml`: TLS and basic auth, as Prometheus users already write it.

Every problem is reported as one ConfigError naming the file and the field, before anything
listens. Options this server cannot honour exactly are refused rather than silently weakened.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, field
from typing import Any

from toolkit.configfile import ConfigError, load_yaml

# client_auth_type -> ssl verify mode. Python's ssl always verifies a certificate it asks for,
# so RequireAnyClientCert (require but do not verify) has no faithful equivalent and is refused.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"}
_TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}
_HTTP_KEYS = {"headers"}
_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}$")


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    basic_auth_users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    certificate: tuple[str, str] = ("", "")  # cert_file and key_file, re-read when they change


def load(path: str) -> WebConfig:
    """Parse and check a web config file; an empty path means plain HTTP without auth."""
    if not path:
        return WebConfig()
    data = load_yaml(path, "web config")
    _check_mapping(path, "", data, _TOP_KEYS)
    base = os.path.dirname(os.path.abspath(path))
    tls = data.get("tls_server_config")
    context = _tls(path, base, tls)
    return WebConfig(
        ssl_context=context,
        basic_auth_users=_users(path, data.get("basic_auth_users")),
        headers=_headers(path, data.get("http_server_config")),
        certificate=(_resolve(base, tls["cert_file"]), _resolve(base, tls["key_file"])) if context else ("", ""),
    )


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _check_mapping(path: str, where: str, data: Any, allowed: set[str]) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"web config {path}: {where or 'top level'} must be a mapping")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"web config {path}: unknown field {where}{unknown[0]}")


def _tls(path: str, base: str, tls: Any) -> ssl.SSLContext | None:
    if tls is None:
        return None
    _check_mapping(path, "tls_server_config.", tls, _TLS_KEYS)
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if not cert or not key:
        raise ConfigError(f"web config {path}: tls_server_config needs both cert_file and key_file")
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in _CLIENT_AUTH:
        raise ConfigError(f"web config {path}: tls_server_config.client_auth_type {auth!r} is not supported "
                          f"(use one of {', '.join(_CLIENT_AUTH)})")
    ca = tls.get("client_ca_file")
    if _CLIENT_AUTH[auth] != ssl.CERT_NONE and not ca:
        raise ConfigError(f"web config {path}: client_auth_type {auth} needs tls_server_config.client_ca_file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _version(path, tls, "min_version", ssl.TLSVersion.TLSv1_2)
    context.maximum_version = _version(path, tls, "max_version", ssl.TLSVersion.TLSv1_3)
    for name in ("cert_file", "key_file") + (("client_ca_file",) if ca else ()):
        if not os.path.isfile(_resolve(base, tls[name])):
            raise ConfigError(f"web config {path}: tls_server_config.{name} {tls[name]}: no such file")
    try:
        context.load_cert_chain(_resolve(base, cert), _resolve(base, key))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"web config {path}: cannot load cert_file {cert} with key_file {key}: "
                          f"{_first_line(exc)}") from None
    context.verify_mode = _CLIENT_AUTH[auth]
    if ca:
        try:
            context.load_verify_locations(_resolve(base, ca))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"web config {path}: cannot load client_ca_file {ca}: {_first_line(exc)}") from None
    return context


def _version(path: str, tls: dict, key: str, default: ssl.TLSVersion) -> ssl.TLSVersion:
    value = tls.get(key)
    if value is None:
        return default
    if value not in _TLS_VERSIONS:
        raise ConfigError(f"web config {path}: tls_server_config.{key} {value!r} must be TLS12 or TLS13")
    return _TLS_VERSIONS[value]


def _resolve(base: str, name: str) -> str:
    """Paths in the file are relative to the file, as in exporter-toolkit."""
    return os.path.join(base, str(name))


def _users(path: str, users: Any) -> dict[str, bytes]:
    if users is None:
        return {}
    if not isinstance(users, dict):
        raise ConfigError(f"web config {path}: basic_auth_users must map user names to bcrypt hashes")
    out: dict[str, bytes] = {}
    for user, hashed in users.items():
        text = str(hashed or "")
        if not _BCRYPT_HASH.match(text):
            raise ConfigError(f"web config {path}: basic_auth_users.{user}: not a bcrypt hash "
                              "(expected $2a$, $2b$ or $2y$, a cost of 04-31 and 53 characters of salt and hash)")
        out[str(user)] = text.encode()
    return out


def _headers(path: str, http: Any) -> dict[str, str]:
    if http is None:
        return {}
    _check_mapping(path, "http_server_config.", http, _HTTP_KEYS)
    headers = http.get("headers") or {}
    if not isinstance(headers, dict):
        raise ConfigError(f"web config {path}: http_server_config.headers must be a mapping")
    return {str(k): str(v) for k, v in headers.items()}
