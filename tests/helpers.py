"""Shared test helpers: fixture paths, in-process scrapes, exposition parsing, free ports."""

from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter import catalog
from exporter.collectors import Collector
from exporter.registry import ScrapeRegistry
from simulator.cluster import free_port  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # real captures by public projects, sources in SOURCES.md
# How often the simulated hardware of an end-to-end stack moves: twice its 1 s scrape. Moving once a
# scrape, a node whose simulator ran late on a busy machine shows no counter movement between two
# scrapes, which rules paging on two samples (irate) read as a stall (EfaTrafficStalled paged a
# checkpointing node so, once in CI).
TWICE_A_SCRAPE = "500ms"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(collectors: list[Collector], timeout: float = 5.0) -> str:
    """One scrape of the given collectors through the real registry, as exposition text."""
    return ScrapeRegistry(collectors, timeout).render()


def samples(text: str) -> Samples:
    """{(sample name, labels): value} of an exposition text, without the timing-dependent durations."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        if family.name == catalog.COLLECTOR_DURATION.name:
            continue
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(parsed: Samples, name: str, **labels: str) -> float:
    return parsed[name, frozenset(labels.items())]


def series(parsed: Samples, name: str) -> list[dict[str, str]]:
    """Label sets of every sample named `name`."""
    return [dict(labels) for sample_name, labels in parsed if sample_name == name]




def wait_until(check, timeout: float, what: str, pause: float = 0.5):
    """Polls `check` until it returns something true (returned), or fails the test with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(what() if callable(what) else what)
        time.sleep(pause)


def http_status(url: str, **kwargs) -> int:
    """The status a GET of `url` answers, 0 while nothing answers (a server starting)."""
    try:
        return requests.get(url, timeout=1, **kwargs).status_code
    except requests.RequestException:
        return 0


def json_reply(handler: BaseHTTPRequestHandler, status: int, body: object) -> None:
    """A stub server's JSON answer."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive ports free now, below the kernel's ephemeral range (32768 and
    up), where the outgoing connections of tests running beside this one never take them."""
    import random
    import socket

    while True:
        base = random.randrange(20000, 32000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
