"""NCCL RAS: the reports as NCCL prints them (tests/fixtures/nccl_ras), the line protocol against the
simulated server and against servers that misbehave (refused, garbage, closed mid-report, silent),
the cadence by role, and the collector's series from a live simulated job."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import pytest

from exporter import catalog
from exporter.collectors.nccl import NcclCollector, NcclOptions
from exporter.collectors.nccl_ras import (
    Cadence,
    Communicator,
    Rank,
    RasError,
    RasPoller,
    Report,
    parse_json,
    parse_text,
    query,
    role,
)
from simulator.ras import Job, RasServer, job_view
from tests.helpers import FIXTURES, free_port, samples, scrape, value, wait_until

RAS = FIXTURES / "nccl_ras"


def test_the_json_report_gives_every_rank_its_launches_and_the_missing_ones_their_state():
    report = parse_json((RAS / "status-2.29.2.json").read_text())
    assert (report.version, report.format, report.collection_seconds, report.timeouts) == \
        ("2.29.2+cuda12.9", "json", 0.012, 0)
    first, second = report.communicators
    assert (first.hash, first.size, first.progress) == ("27a079b828ff1a75", 4, 6650)
    assert [(r.rank, r.host, r.pid, r.nvml_dev, r.launched, r.async_error) for r in first.ranks] == [
        (0, "172.16.64.210", 483072, 0, 6650, 0), (1, "172.16.64.210", 483073, 1, 6650, 6),
        (2, "172.16.64.213", 3487983, 0, 6649, 0)]
    assert first.missing == (Rank(3, "172.16.64.213", 3487984, 1, -1, missing="dead"),)
    assert [(r.rank, n) for r, n in report.behind(first)] == [(2, 1)]
    assert (second.hash, second.progress, report.behind(second), second.missing) == ("00c0ffee12345678", 64, [], ())


def test_the_text_report_gives_the_outliers_and_the_processes_of_its_error_sections():
    """Before 2.28.7 only the text report exists, and it names outliers only: six ranks at 6649 while
    26 are at 6650; a rank at 60 of 64 named with its NVML index (not its CUDA ordinal); the
    status-mismatch lines between are not counts."""
    report = parse_text((RAS / "status-2.27.3-mismatch.txt").read_text())
    assert (report.version, report.format) == ("2.27.3+cuda12.9", "text")
    world, small = report.communicators
    assert (world.hash, world.progress) == ("27a079b828ff1a75", 6650)
    assert [(r.rank, r.nvml_dev, r.pid, n) for r, n in report.behind(world)] == [
        (0, 0, 483072, 1), (2, 2, 483074, 1), (3, 3, 483075, 1), (4, 4, 483076, 1), (5, 5, 483077, 1),
        (7, 7, 483079, 1)]
    assert [(r.rank, r.host, r.nvml_dev, n) for r, n in report.behind(small)] == [(2, "172.16.64.212", 5, 4)]


def test_the_text_reports_dead_and_unresponsive_processes_per_communicator_and_for_the_job():
    report = parse_text((RAS / "status-2.27.3-dead.txt").read_text())
    world, job = report.communicators
    assert world.hash == "27a079b828ff1a75" and world.ranks == ()
    assert [(r.rank, r.nvml_dev, r.missing) for r in world.missing] == [(28, 4, "unresponsive"), (29, 5, "dead")]
    assert job.hash == "" and [(r.pid, r.nvml_dev, r.missing) for r in job.missing] == [
        (3487983, 4, "unresponsive"), (3487984, 5, "dead")]


@pytest.mark.parametrize("text", ["", "not json", '{"communicators": [{"size": 2}]}', '{"communicators": 5}'])
def test_a_malformed_json_report_is_an_error(text):
    with pytest.raises(RasError):
        parse_json(text)


def test_text_that_is_not_a_report_is_an_error():
    with pytest.raises(RasError, match="no 'NCCL version' line"):
        parse_text("ERROR: Unknown command STATUS\n")


# --- the protocol, over real sockets -------------------------------------------------------------------------

HOSTS = ("127.0.0.2", "127.0.0.3")


def sim_job(version: str = "2.29.2", started: float | None = None) -> Job:
    return Job("4242", HOSTS, 2, started if started is not None else time.time() - 30, version)


@contextmanager
def sim_server(job: Job, faults: list[dict] | None = None):
    port = free_port()
    server = RasServer(HOSTS[0], port, lambda: (job, faults or []))
    server.start()
    try:
        yield f"{HOSTS[0]}:{port}"
    finally:
        server.stop()


@pytest.mark.parametrize(("version", "form"), [("2.29.2", "json"), ("2.28.7", "json"), ("2.27.3", "text")])
def test_the_client_speaks_json_where_the_server_takes_it_and_reads_text_before(version, form):
    """The hung job of the simulator, asked over TCP: 2.28.7+ answers `SET FORMAT json` with OK,
    older servers with `ERROR: Invalid format json` and the text report follows; both name the rank."""
    job = sim_job(version)
    with sim_server(job, [{"kind": "nccl_hang", "node": 1, "gpu": 1, "since": time.time() - 10}]) as address:
        report = query(address, 5.0)
    assert report.format == form and report.version == version
    named = [(c.hash, r.host, r.nvml_dev, n) for c in report.communicators for r, n in report.behind(c)]
    comms = job_view(job, [], time.time())  # World, DP Group 0, TP Group 0 and 1, PP Group 0 and 1
    holding = [f"{comms[i].hash:016x}" for i in (0, 1, 3, 5)]
    assert sorted(named) == sorted((comm, "127.0.0.3", 1, 1) for comm in holding)


def test_nothing_listening_is_a_refusal():
    with pytest.raises(RasError) as caught:
        query(f"127.0.0.1:{free_port()}", 2.0)
    assert caught.value.refused


@contextmanager
def raw_server(script):
    """A TCP server on loopback whose one connection is handled by `script(connection)`."""
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=lambda: _serve_once(listener, script), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(timeout=5)


def _serve_once(listener: socket.socket, script) -> None:
    try:
        connection, _ = listener.accept()
    except OSError:
        return
    with connection:
        script(connection)


def _handshake_then(rest: bytes, hold: float = 0.0):
    def script(connection: socket.socket) -> None:
        reader = connection.makefile("rb")
        for answer in (b"SERVER PROTOCOL 2\n", b"OK\n", b"OK\n"):
            reader.readline()
            connection.sendall(answer)
        reader.readline()  # STATUS
        connection.sendall(rest)
        time.sleep(hold)
    return script


def test_a_server_that_answers_garbage_is_an_error():
    with raw_server(lambda c: (c.recv(100), c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n"))) as address, \
            pytest.raises(RasError, match="not a RAS server"):
        query(address, 2.0)


def test_a_report_cut_off_mid_way_is_an_error():
    half = (RAS / "status-2.29.2.json").read_bytes()[:700]
    with raw_server(_handshake_then(half)) as address, pytest.raises(RasError, match="malformed JSON"):
        query(address, 2.0)


def test_a_server_that_stops_answering_costs_the_deadline_and_no_more():
    """A RAS answer that takes 10 s (a sick job): the query gives up at its own deadline."""
    with raw_server(_handshake_then(b'{"nccl_version": "2.29', hold=10)) as address:
        started = time.monotonic()
        with pytest.raises(RasError, match="deadline"):
            query(address, 1.0)
        assert 0.9 < time.monotonic() - started < 2.0


# --- who asks, how often -------------------------------------------------------------------------------------

def report_of(*hosts_by_rank: str, size: int = 0, fmt: str = "json") -> Report:
    ranks = tuple(Rank(i, host, 100 + i, i, 10) for i, host in enumerate(hosts_by_rank))
    return Report("2.29.2", fmt, (Communicator("00000000000000aa", size or len(ranks), 10, ranks),
                                  Communicator("00000000000000bb", 1, 10, ranks[-1:])))


def test_the_lowest_rank_of_the_largest_communicator_leads_the_next_host_backs_up():
    report = report_of("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3")
    assert [role(report, frozenset({h})) for h in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9")] == \
        ["leader", "backup", "member", "none"]
    assert role(report_of("10.0.0.1", fmt="text"), frozenset({"10.0.0.1"})) == "member"


def test_the_cadence_follows_the_role_and_an_error_waits_the_idle_interval():
    cadence = Cadence(leader=10, backup=60, member=3600, idle=45)
    answers = [report_of("10.0.0.1", "10.0.0.2"), report_of("10.0.0.2", "10.0.0.1"),
               report_of("10.0.0.3", "10.0.0.4", "10.0.0.1"), RasError("boom")]

    def ask(*_args):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    poller = RasPoller("x:1", frozenset({"10.0.0.1"}), cadence, ask=ask)
    assert [poller.query_once() for _ in range(4)] == [10, 60, 3600, 45]
    view = poller.view()
    assert (view.queries, view.errors, view.refused, view.report, view.role) == (4, 1, 0, None, "none")


@pytest.mark.parametrize(("progress", "stalled"), [
    pytest.param([5, 7, 7, 7, 8], [0, 0, 10, 20, 0], id="from the first report at the current progress"),
    # A job starting (INIT, loading its data): its communicators exist at 0 launches for as long as it
    # takes, which is not a hang; the clock starts at the first launch.
    pytest.param([0, 0, 0, 1, 1], [0, 0, 0, 0, 10], id="not while nothing was launched yet"),
])
def test_stalled_seconds_count_while_the_progress_stands_still(progress, stalled):
    now = [1000.0]

    def ask(*_args):
        ranks = (Rank(0, "10.0.0.1", 1, 0, progress.pop(0)),)
        return Report("2.29.2", "json", (Communicator("00000000000000aa", 1, ranks[0].launched, ranks),))

    poller = RasPoller("x:1", frozenset({"10.0.0.1"}), ask=ask, clock=lambda: now[0])
    seen = []
    for _ in range(5):
        poller.query_once()
        seen.append(poller.view().stalled["00000000000000aa"])
        now[0] += 10
    assert seen == stalled


# --- the collector on a live simulated job -------------------------------------------------------------------

def ras_collector(address: str, host: str, other_job: str = "") -> NcclCollector:
    """The collector of the node at `host`, its GPUs 0 and 1 in the simulated job 4242 and, with
    `other_job`, GPUs 2 and 3 in that job (listed first)."""
    nccl = NcclCollector(NcclOptions(ras_address=address, ras_hosts=(host,), ras_cadence=Cadence(leader=0.2)))
    gpus = {f"gpu-{i}": ((str(i), f"GPU-{i}"), (other_job,)) for i in (2, 3) if other_job}
    gpus.update({f"gpu-{i}": ((str(i), f"GPU-{i}"), ("4242",)) for i in range(2)})
    nccl.identify_with(lambda: gpus)
    return nccl


def test_with_two_jobs_on_the_node_the_report_is_the_job_holding_its_ranks():
    """The node's RAS port answers for one job (the process holding it speaks for its own): the view
    is labelled with the job of this node's GPUs that hold the report's ranks, not the node's other job."""
    with sim_server(sim_job()) as address:
        leader = ras_collector(address, HOSTS[0], other_job="5000")
        try:
            parsed = wait_until(lambda: (p := samples(scrape([leader]))) and value(p, catalog.NCCL_RAS_UP.name)
                                and p, 10, "RAS never answered")
        finally:
            leader.close()
    jobs = {dict(labels)["job_id"] for (name, labels) in parsed if name == catalog.NCCL_RAS_PROGRESS.name}
    assert jobs == {"4242"}


def test_the_leader_names_the_rank_behind_and_the_member_only_its_own_health():
    """node-1's GPU 1 never launched the collective the others wait in: the leader (node-0, rank 0)
    serves every communicator's progress and that rank in each communicator holding it; node-1
    serves its queries' health and its address only."""
    job = sim_job()
    with sim_server(job, [{"kind": "nccl_hang", "node": 1, "gpu": 1, "since": time.time() - 10}]) as address:
        leader, member = ras_collector(address, HOSTS[0]), ras_collector(address, HOSTS[1])
        try:
            wait_until(lambda: "gpuscope_nccl_ras_up 1" in scrape([leader]) and
                       "gpuscope_nccl_ras_up 1" in scrape([member]), 10, "RAS never answered")
            time.sleep(0.5)  # a few more reports: the stall is measured across them
            lead, other = samples(scrape([leader])), samples(scrape([member]))
        finally:
            leader.close()
            member.close()
    assert value(lead, catalog.NCCL_RAS_LEADER.name) == 1 and value(other, catalog.NCCL_RAS_LEADER.name) == 0
    assert value(other, catalog.NCCL_RAS_HOST.name, host=HOSTS[1]) == 1
    assert not [key for key in other if key[0].startswith("gpuscope_nccl_ras_rank")]
    assert not [key for key in other if key[0].startswith("gpuscope_nccl_ras_communicator")]
    behind = sorted((dict(labels)["comm"], dict(labels)["rank"], dict(labels)["host"], dict(labels)["nvml_dev"], v)
                    for (name, labels), v in lead.items() if name == catalog.NCCL_RAS_BEHIND.name)
    comms = {c.hash for c in _parsed(job)}
    assert len(behind) == 4 and {b[0] for b in behind} <= comms  # World, DP Group 0, TP Group 1, PP Group 1
    assert sorted((b[1], b[2], b[3], b[4]) for b in behind) == [("1", "127.0.0.3", "1", 1.0),
                                                                ("1", "127.0.0.3", "1", 1.0),
                                                                ("3", "127.0.0.3", "1", 1.0),
                                                                ("3", "127.0.0.3", "1", 1.0)]
    progress = [labels for (name, labels) in lead if name == catalog.NCCL_RAS_PROGRESS.name]
    assert len(progress) == len(comms) == 1 + 1 + 2 + 2 and all(dict(p)["job_id"] == "4242" for p in progress)
    stalled = [v for (name, _), v in lead.items() if name == catalog.NCCL_RAS_STALLED.name]
    assert len(stalled) == len(comms) and min(stalled) > 0
    late = sorted(v for (name, _), v in lead.items() if name == catalog.NCCL_RAS_LATE.name)
    assert late == [0, 0, 1, 1, 1, 1]  # TP Group 0 and PP Group 0 hold no late rank


def test_a_slow_report_of_a_healthy_job_is_served_and_stands_still_nowhere():
    """RAS answering in 1 s, five times the leader's interval here (a sick or huge job's report takes
    seconds; RAS's own leg timeout is 5 s, the query's deadline 30 s): each report is accepted and
    served until the next, and a healthy job's progress moves between them, so nothing stood still."""
    with sim_server(sim_job(), [{"kind": "ras_slow", "seconds": 1.0, "since": time.time()}]) as address:
        leader = ras_collector(address, HOSTS[0])
        try:
            wait_until(lambda: value(samples(scrape([leader])), catalog.NCCL_RAS_QUERIES.name) >= 3, 10,
                       "fewer than three slow reports")
            parsed = samples(scrape([leader]))
        finally:
            leader.close()
    assert value(parsed, catalog.NCCL_RAS_UP.name) == 1
    assert value(parsed, catalog.NCCL_RAS_QUERY_DURATION.name) >= 1.0
    assert value(parsed, catalog.NCCL_RAS_QUERY_FAILURES.name, reason="error") == 0
    assert {v for (name, _), v in parsed.items() if name == catalog.NCCL_RAS_STALLED.name} == {0.0}
    assert not [key for key in parsed if key[0] == catalog.NCCL_RAS_BEHIND.name]


def _parsed(job: Job) -> list[Communicator]:
    return [Communicator(f"{c.hash:016x}", c.size, 0, ()) for c in job_view(job, [], time.time())]


def test_a_dead_process_is_unresponsive_then_dead_and_nothing_listening_is_one_refusal_counted():
    job = Job("4242", HOSTS, 2, time.time() - 100, "2.29.2", timeout_factor=0.05)  # 0.25 s, then 3 s
    with sim_server(job, [{"kind": "nccl_process_dead", "node": 1, "gpu": 0, "since": time.time()}]) as address:
        leader = ras_collector(address, HOSTS[0])
        try:
            def missing() -> set:
                return {(dict(labels)["host"], dict(labels)["nvml_dev"], dict(labels)["state"])
                        for (name, labels) in samples(scrape([leader])) if name == catalog.NCCL_RAS_MISSING.name}
            wait_until(lambda: missing() == {("127.0.0.3", "0", "unresponsive")}, 5, lambda: f"{missing()}")
            wait_until(lambda: missing() == {("127.0.0.3", "0", "dead")}, 10, lambda: f"{missing()}")
        finally:
            leader.close()
    nobody = ras_collector(f"127.0.0.1:{free_port()}", HOSTS[0])
    try:
        refused = catalog.NCCL_RAS_QUERY_FAILURES.name
        parsed = wait_until(lambda: (p := samples(scrape([nobody]))) and value(p, refused, reason="refused") and p,
                            5, "no refusal counted")
    finally:
        nobody.close()
    assert value(parsed, catalog.NCCL_RAS_UP.name) == 0
    assert 1 <= value(parsed, refused, reason="refused") == value(parsed, catalog.NCCL_RAS_QUERIES.name) <= 2
    assert value(parsed, catalog.NCCL_RAS_QUERY_FAILURES.name, reason="error") == 0
