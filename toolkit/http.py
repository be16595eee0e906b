"""The HTTP edge both gpuscope servers stand on (the exporter's and the remediation receiver's): TLS
and basic auth from a web config, bounded connections and header time, routing by method and path.

Each connection is served on its own thread with a socket timeout, and the TLS handshake happens
on that thread too, so one slow or silent client never holds up Prometheus.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import bcrypt

from toolkit.webconfig import WebConfig

REQUEST_TIMEOUT_SECONDS = 30.0
_AUTH_CACHE_SIZE = 64
# Python's default listen backlog is 5: a burst of new connections overflowed it and waited seconds
# for SYN retries (issue 21). The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024
BCRYPT_MAX_BYTES = 72  # bcrypt's limit; a longer password made checkpw raise and the connection drop
MAX_DISCARDED_BODY = 65536
# Open connections at most; past it the oldest idle one is closed for the newcomer (issue 21: 1,000
# idle clients held a thread each, unbounded).
MAX_CONNECTIONS = 256
HEADER_SECONDS = 10.0  # a request's header lines, all of them, must arrive within this

log = logging.getLogger("gpuscope")


class BasicAuth:
    """Checks bcrypt credentials, caching verdicts: bcrypt costs ~50 ms and Prometheus asks every 15 s.

    An unknown user costs the same bcrypt as a known one (no probing user names by time), and one
    bcrypt runs at a time: a flood of wrong passwords takes one core, not all, and a scraper whose
    verdict is cached never waits for it."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self._users = users
        self._verdicts: dict[bytes, bool] = {}
        self._lock = threading.Lock()
        self._bcrypt = threading.Semaphore(1)
        # the first user's cost ("$2b$10$..."), so an unknown name takes as long as a wrong password
        self._dummy = bcrypt.hashpw(b"unknown user", bcrypt.gensalt(int(next(iter(users.values()))[4:6]))) \
            if users else b""

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    def allows(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        secret = password.encode()
        if len(secret) > BCRYPT_MAX_BYTES:
            return False
        hashed = self._users.get(user)
        key = hashlib.sha256(b"\0".join((user.encode(), secret, hashed or b""))).digest()
        with self._lock:
            verdict = self._verdicts.get(key)
        if verdict is None:
            with self._bcrypt:
                verdict = bcrypt.checkpw(secret, hashed or self._dummy) and hashed is not None
            with self._lock:
                if len(self._verdicts) >= _AUTH_CACHE_SIZE:
                    self._verdicts.clear()
                self._verdicts[key] = verdict
        return verdict


class Certificate:
    """Re-reads the TLS certificate and key when their files change (a renewal), checked at most
    once a second on a handshake, as exporter-toolkit does; a pair that fails to load (half
    written) leaves the old one serving and is logged."""

    def __init__(self, context: ssl.SSLContext | None, files: tuple[str, str]) -> None:
        self._context, self._files = context, files
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._stamp = self._read_stamp()

    def _read_stamp(self) -> tuple:
        try:
            return tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in map(os.stat, self._files))
        except OSError:
            return ()

    def current(self) -> ssl.SSLContext | None:
        if self._context is None or not self._files[0]:
            return self._context
        with self._lock:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + 1.0
                stamp = self._read_stamp()
                if stamp and stamp != self._stamp:
                    self._stamp = stamp
                    try:
                        self._context.load_cert_chain(*self._files)
                        log.info("TLS certificate reloaded", extra={"cert_file": self._files[0]})
                    except (ssl.SSLError, OSError) as exc:
                        log.warning("TLS certificate not reloaded; the old one still serves",
                                    extra={"cert_file": self._files[0], "error": str(exc)})
        return self._context


@dataclass
class _Connection:
    sock: socket.socket
    busy: bool = False  # handling a request: never evicted, and a stop waits for it
    headers_since: float | None = None  # when it began sending a request's header lines

    def cut(self) -> None:
        """Shuts the socket down: its handler thread reads EOF and ends."""
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class WebServer(ThreadingHTTPServer):
    """A threaded HTTP server with the web config's TLS and basic auth (also the remediation receiver's).

    It knows its open connections and which are handling a request: past MAX_CONNECTIONS a new
    connection evicts the oldest one that is not (idle kept-alive, or still sending its headers),
    so idle or dribbling clients cannot pile up threads or crowd out a scraper; and a stop can let
    the requests in progress finish (`handling`, `wait_idle`)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], web: WebConfig) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.web = web
        self.auth = BasicAuth(web.basic_auth_users)
        self.certificate = Certificate(web.ssl_context, web.certificate)
        self._open: dict[object, _Connection] = {}  # by client address, oldest first
        self._idle = threading.Condition()
        self._closed = threading.Event()  # before binding: a failed bind calls server_close()
        super().__init__(address, handler)
        threading.Thread(target=self._cut_slow_headers, name="http-header-deadline", daemon=True).start()

    def process_request(self, request, client_address) -> None:
        with self._idle:
            if len(self._open) >= MAX_CONNECTIONS and not self._evict_one():
                self.shutdown_request(request)  # every connection is busy with a request: refuse this one
                return
            self._open[client_address] = _Connection(request)
        super().process_request(request, client_address)

    def _evict_one(self) -> bool:
        """Closes the oldest connection not handling a request (caller holds the lock)."""
        for address, connection in self._open.items():
            if not connection.busy:
                connection.cut()
                del self._open[address]
                return True
        return False

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._idle:
                connection = self._open.get(client_address)
                if connection is not None and connection.sock is request:
                    del self._open[client_address]

    @contextmanager
    def handling(self, client_address) -> Iterator[None]:
        """Marks the connection's request in progress: it is not evicted, and a stop waits for it."""
        self._set_busy(client_address, True)
        try:
            yield
        finally:
            self._set_busy(client_address, False)

    def headers_started(self, client_address, started: bool) -> None:
        """The connection began (True) or finished (False) sending a request's header lines."""
        with self._idle:
            if client_address in self._open:
                self._open[client_address].headers_since = time.monotonic() if started else None

    def _cut_slow_headers(self) -> None:
        """Closes connections whose header lines take longer than HEADER_SECONDS in all: the socket
        timeout restarts with every line, so a client sending one a while could hold on for ever."""
        while not self._closed.wait(1.0):
            now = time.monotonic()
            with self._idle:
                for connection in self._open.values():
                    since = connection.headers_since
                    if since is not None and now - since > HEADER_SECONDS:
                        connection.cut()

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    def _set_busy(self, client_address, busy: bool) -> None:
        with self._idle:
            if client_address in self._open:
                self._open[client_address].busy = busy
            self._idle.notify_all()

    def wait_idle(self, grace: float) -> int:
        """Waits up to `grace` seconds for the requests in progress; returns how many remain."""
        def busy() -> int:
            return sum(1 for connection in self._open.values() if connection.busy)

        with self._idle:
            self._idle.wait_for(lambda: busy() == 0, timeout=grace)
            return busy()

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # ":port" serves IPv4 too
        super().server_bind()

    def finish_request(self, request, client_address) -> None:
        """Runs on the connection's own thread: TLS handshake here, bounded by the socket timeout."""
        request.settimeout(REQUEST_TIMEOUT_SECONDS)
        if request.family in (socket.AF_INET, socket.AF_INET6):  # small replies leave at once (no Nagle delay)
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        context = self.certificate.current()
        if context is None:
            super().finish_request(request, client_address)
            return
        try:
            tls = context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake failed", extra={"client": client_address[0], "error": str(exc)})
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request, client_address) -> None:
        log.debug("connection error", extra={"client": client_address[0]}, exc_info=True)


TEXT = "text/plain; charset=utf-8"
Routes = dict[str, dict[str, Callable[[], None]]]  # method -> path -> what answers it


class BaseHandler(BaseHTTPRequestHandler):
    """What every gpuscope endpoint does with a request (the exporter's and the remediation
    receiver's): the header lines under one deadline, routes by method and path, HEAD as GET without
    the body, 405 with `Allow` for other methods, a GET's body discarded, a POST's bounded, the web
    config's authentication (except on `open_paths`) and response headers, the request marked in
    progress (never evicted, waited for at a stop), debug logging. Subclasses give `routes()`."""

    server: WebServer
    server_version = "gpuscope"  # a server names its version: "gpuscope/0.1.0"
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # a garbled request line still gets a status line back
    open_paths: frozenset[str] = frozenset()  # answered without authentication (probes)
    max_body = 0  # bytes a POST body may have
    _head = False

    def routes(self) -> Routes:
        raise NotImplementedError

    def healthy(self) -> None:
        """/-/healthy: the process answers."""
        self._send(200, TEXT, b"Healthy\n")

    def authorized(self) -> bool:
        """The web config's basic auth, when it has users."""
        return not self.server.auth.enabled or self.server.auth.allows(self.headers.get("Authorization"))

    def challenge(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="gpuscope"'} if self.server.auth.enabled else {}

    def parse_request(self) -> bool:
        """Reads the header lines, under the server's overall deadline for them."""
        self.server.headers_started(self.client_address, True)
        try:
            return super().parse_request()
        finally:
            self.server.headers_started(self.client_address, False)

    def do_HEAD(self) -> None:
        """GET's status and headers, without the body."""
        self._head = True
        self._dispatch("GET")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _other(self) -> None:
        self._dispatch(self.command)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other

    def _dispatch(self, method: str) -> None:
        with self.server.handling(self.client_address):
            routes = self.routes()
            if method not in routes:
                allowed = ", ".join(sorted({*routes, *(["HEAD"] if "GET" in routes else [])}))
                self.close_connection = method != "GET" and "Content-Length" in self.headers
                self._send(405, TEXT, b"Method Not Allowed\n", {"Allow": allowed})
                return
            if method == "GET":
                self._discard_body()
            path = self.path.split("?", 1)[0]
            if path not in self.open_paths and not self.authorized():
                self.close_connection = method != "GET"  # a body left unread
                self._send(401, TEXT, b"Unauthorized\n", self.challenge())
                return
            route = routes[method].get(path)
            if route is None:
                self.close_connection = method != "GET"
                self._send(404, TEXT, b"Not Found\n")
            else:
                route()

    def _discard_body(self) -> None:
        """A GET may carry a body; left unread, it would be parsed as the next request on the connection.
        Small ones are read and dropped; a large or malformed length closes the connection after this reply."""
        length = self.headers.get("Content-Length")
        if length is None:
            return
        if length.isdigit() and int(length) <= MAX_DISCARDED_BODY:
            self.rfile.read(int(length))
        else:
            self.close_connection = True

    def read_body(self) -> bytes | None:
        """A POST's body, at most `max_body` bytes; None once a 411, 400 or 413 has answered it (the
        connection then closes: what follows on it cannot be told from the body)."""
        length = self.headers.get("Content-Length")
        refusal = (
            (411, b"Length Required: a Content-Length is needed\n") if length is None else
            (400, b"Bad Request: Content-Length is not a number\n") if not length.strip().isdigit() else
            (413, f"Content Too Large: at most {self.max_body} bytes\n".encode()) if int(length) > self.max_body
            else None)
        if refusal:
            self.close_connection = True
            self._send(refusal[0], TEXT, refusal[1])
            return None
        return self.rfile.read(int(length))

    def _send(self, status: int, content_type: str, body: bytes, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**self.server.web.headers, **(extra or {})}.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not self._head:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        log.debug(format % args, extra={"client": self.client_address[0]})


def accepts_gzip(header: str) -> bool:
    """Whether Accept-Encoding allows gzip: listed (or `*`) without `q=0`."""
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.replace(" ", "").lower().removeprefix("q=")
            try:
                return not params or float(q) > 0
            except ValueError:
                return False
    return False
