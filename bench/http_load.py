"""The HTTP endpoint under load: gpuscope against node_exporter, on loopback, bounded in count and time.

Two measurements, each run against both exporters in turn, for several rounds (interleaved, so
machine noise hits both alike):

- burst: CLIENTS threads each open a new connection per request for SECONDS (the connection storm
  of many Prometheus servers or a restart); errors, p50, p99 and max latency;
- kept-alive: one connection, 200 small requests in a row; the median latency.

The small endpoint is gpuscope's `/-/healthy` and node_exporter's landing page `/`. With `--auth`
both serve basic auth from the same web config (one bcrypt user, cost 10), and the measurement is a
legitimate scraper's `/metrics` latency, quiet and while CLIENTS/6 threads send wrong passwords.
With `--idle N`, N connections that stay idle or send half a request are opened to each exporter,
and the scraper's latency, the exporter's threads and resident memory are read with them open. Run:

    python bench/http_load.py [--clients 50] [--seconds 5] [--rounds 3] [--auth | --idle 1000]

It needs Debian's prometheus-node-exporter (apt-get install prometheus-node-exporter).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import bcrypt

from bench.rdma_scrape import machine

PASSWORD = "legitimate-scraper"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, connection: http.client.HTTPConnection | None = None, password: str = "",
        expect: int = 200) -> float:
    """One GET (as `user` with `password` if given); its latency in seconds (raises on another status)."""
    own = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": "Basic " + base64.b64encode(f"user:{password}".encode()).decode()} if password else {}
    start = time.perf_counter()
    own.request("GET", path, headers=headers)
    response = own.getresponse()
    response.read()
    elapsed = time.perf_counter() - start
    if response.status != expect:
        raise RuntimeError(f"HTTP {response.status}")
    if connection is None:
        own.close()
    return elapsed


def burst(port: int, path: str, clients: int, seconds: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < deadline:
            try:
                elapsed = get(port, path)
                with lock:
                    latencies.append(elapsed)
            except (OSError, RuntimeError, http.client.HTTPException):
                with lock:
                    errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors[0]


def kept_alive(port: int, path: str, requests: int = 200) -> float:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    get(port, path, connection)
    median = statistics.median(get(port, path, connection) for _ in range(requests))
    connection.close()
    return median


def flooded(port: int, path: str, flooders: int, seconds: float) -> tuple[list[float], list[float]]:
    """A legitimate scraper's latencies (a kept-alive connection, as Prometheus), quiet and then while
    `flooders` threads send wrong passwords on new connections."""
    def scrape_for(duration: float) -> list[float]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        end, times = time.monotonic() + duration, []
        while time.monotonic() < end:
            times.append(get(port, path, connection, PASSWORD))
        connection.close()
        return times

    quiet = scrape_for(seconds)
    stop = threading.Event()

    def flood(number: int) -> None:
        attempt = 0
        while not stop.is_set():
            attempt += 1
            with contextlib.suppress(OSError, RuntimeError, http.client.HTTPException):
                get(port, path, password=f"wrong-{number}-{attempt}", expect=401)

    threads = [threading.Thread(target=flood, args=(n,)) for n in range(flooders)]
    for thread in threads:
        thread.start()
    try:
        loud = scrape_for(seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    return quiet, loud


def process_status(pid: int) -> tuple[int, float]:
    """(threads, resident MiB) of a process, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        fields = dict(line.split(":", 1) for line in handle)
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024


def idle_rounds(args, ports: dict[str, int], paths: dict[str, str], pids: dict[str, int]) -> int:
    header(f"{args.idle} connections held open (half idle, half a request line and no more), {args.rounds} rounds",
           f"{'threads':>7} {'RSS MiB':>7} {'held':>5} {'scrape p50':>10} {'scrape p99':>10} {'errors':>6}  ms")
    for round_number in range(1, args.rounds + 1):
        for name, port in ports.items():
            held = []
            for n in range(args.idle):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                    if n % 2:
                        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
                    held.append(sock)
                except OSError:
                    break
            time.sleep(1)
            times, errors = [], 0
            for _ in range(50):
                try:
                    times.append(get(port, paths[name]))
                except (OSError, RuntimeError, http.client.HTTPException):
                    errors += 1
            threads, rss = process_status(pids[name])
            alive = sum(1 for sock in held if _open(sock))
            print(f"{round_number:>5} {name:<14} {threads:>7} {rss:>7.1f} {alive:>5} "
                  f"{quantile(times, 0.5) * 1e3:>10.1f} {quantile(times, 0.99) * 1e3:>10.1f} {errors:>6}", flush=True)
            for sock in held:
                sock.close()
            time.sleep(1)
    return 0


def _open(sock: socket.socket) -> bool:
    """Whether the server still holds the connection (no EOF or reset waiting on it)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--auth", action="store_true", help="measure a scraper under a failed-auth flood instead")
    mode.add_argument("--idle", type=int, default=0, metavar="N", help="hold N idle or half-sent connections instead")
    args = parser.parse_args()
    node_exporter = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if not node_exporter:
        print("needs prometheus-node-exporter (apt-get install prometheus-node-exporter)", file=sys.stderr)
        return 2
    ports = {"gpuscope": free_port(), "node_exporter": free_port()}
    commands = {
        "gpuscope": [sys.executable, "-m", "gpuscope", "exporter", "--simulate=p5.48xlarge",
                     f"--web.listen-address=127.0.0.1:{ports['gpuscope']}"],
        "node_exporter": [node_exporter, f"--web.listen-address=127.0.0.1:{ports['node_exporter']}"],
    }
    paths = {"gpuscope": "/-/healthy", "node_exporter": "/"}
    work = tempfile.mkdtemp(prefix="gpuscope-http-load-")
    if args.auth:
        web = os.path.join(work, "web.yml")
        with open(web, "w", encoding="utf-8") as handle:
            hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
            handle.write(f"basic_auth_users:\n  user: '{hashed}'\n")
        for command in commands.values():
            command.append(f"--web.config.file={web}")
        paths = {"gpuscope": "/metrics", "node_exporter": "/metrics"}
    processes = {name: subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, cmd in commands.items()}
    try:
        for name, port in ports.items():
            wait_answers(name, port, paths[name], PASSWORD if args.auth else "")
        if args.auth:
            return auth_rounds(args, ports, paths)
        if args.idle:
            return idle_rounds(args, ports, paths, {name: p.pid for name, p in processes.items()})
        return burst_rounds(args, ports, paths)
    finally:
        for process in processes.values():
            process.terminate()
            process.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)


def wait_answers(name: str, port: int, path: str, password: str) -> None:
    """Until the exporter answers `path` with 200 (as the user, when there is a password)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            get(port, path, password=password)
            return
        except (OSError, RuntimeError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not come up") from None
            time.sleep(0.1)


def header(what: str, columns: str) -> None:
    """The machine, what the rounds measure, and the table's column titles."""
    print(f"{machine()}; {what}")
    print(f"{'round':>5} {'exporter':<14} {columns}")


def burst_rounds(args, ports: dict[str, int], paths: dict[str, str]) -> int:
    header(f"{args.clients} clients x {args.seconds:g} s, {args.rounds} rounds",
           f"{'requests':>8} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'kept-alive ms':>13}")
    for round_number in range(1, args.rounds + 1):
        for name, port in ports.items():
            latencies, errors = burst(port, paths[name], args.clients, args.seconds)
            alive = kept_alive(port, paths[name])
            print(f"{round_number:>5} {name:<14} {len(latencies):>8} {errors:>6} "
                  f"{quantile(latencies, 0.5) * 1e3:>7.1f} {quantile(latencies, 0.99) * 1e3:>7.1f} "
                  f"{max(latencies, default=0) * 1e3:>7.1f} {alive * 1e3:>13.2f}", flush=True)
    return 0


def auth_rounds(args, ports: dict[str, int], paths: dict[str, str]) -> int:
    flooders = max(1, args.clients // 6)
    header(f"a scraper on /metrics, quiet and with {flooders} threads sending wrong passwords, {args.seconds:g} s "
           f"each, {args.rounds} rounds", f"{'quiet p50':>9} {'quiet p99':>9} {'flood p50':>9} {'flood p99':>9}  ms")
    for round_number in range(1, args.rounds + 1):
        for name, port in ports.items():
            quiet, loud = flooded(port, paths[name], flooders, args.seconds)
            figures = [quantile(times, q) * 1e3 for times in (quiet, loud) for q in (0.5, 0.99)]
            print(f"{round_number:>5} {name:<14} " + " ".join(f"{f:>9.1f}" for f in figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
