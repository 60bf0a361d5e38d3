"""The HTTP server against hostile and careless clients (issue 28: findings 2, 3, 7 and 10), on a real `vigil run`
process and raw sockets on 127.0.0.1, and on the app `vigil run` serves (FastAPI's TestClient).

* 2: a request head over `http.max_header_bytes` gets 431 and the connection closes; an idle connection, a head
  that trickles in and a body that trickles in are cut off after `http.header_timeout` / `http.body_timeout`.
* 3: while reads are open only loopback names, IP addresses and `http.allowed_hosts` are answered (DNS
  rebinding); `vigil config check` warns about an API bound beyond loopback.
* 7: a taken port: `vigil run` names it and exits non-zero at once, having started nothing.
* 10: `/docs` and `/redoc` (CDN scripts) are off by default; a 422 echoing a lone surrogate is still an answer.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from detector.api.app import create_app
from detector.api.server import server_app
from detector.config import load_config
from detector.daemon import Runtime, build_runtime
from tests.support.config import WEB_FEATURES, config_text, daemon_heading, detector, heading, write_config_file
from tests.support.daemon import REPO, Daemon, daemon_env, vigil_run
from tests.support.net import free_port

WAIT_S = 30          # how long a test waits for the daemon to act on a deadline of 1-2 s before it fails


def _config(path: Path, port: int, **http: Any) -> Path:
    head = daemon_heading(port).replace("[http]\n", "[http]\n" + "".join(
        f"{key} = {value}\n" for key, value in http.items()))
    return write_config_file(path, config_text(head, detector("web", WEB_FEATURES)))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the socket tests: deadlines of 1 s (head) and 2 s (body), the default head cap (64 KiB),
    one allowed name and one allowed domain."""
    folder = tmp_path_factory.mktemp("hardening")
    port = free_port()
    config = _config(folder / "config.toml", port, header_timeout='"1s"', body_timeout='"2s"',
                     allowed_hosts='["vigil.example", "*.corp.example"]')
    with Daemon(config, port, folder / "state") as d:
        d.start()
        yield d


def _connect(daemon: Daemon) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=WAIT_S)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a test failure after WAIT_S s)."""
    data = b""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            pytest.fail(f"the connection was still open after {WAIT_S} s; received {data[:200]!r}")
        if not chunk:
            break
        data += chunk
    return data


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


# -- 2: the request head: a size cap ---------------------------------------------------------------------------

def test_a_request_head_over_the_cap_gets_431_and_the_connection_closes(daemon: Daemon) -> None:
    """A 1 MiB header (16 times the default cap): 431 with an error naming the key, then the connection
    closes; before, uvicorn kept every byte of it and answered 200."""
    with _connect(daemon) as sock:
        head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * (1 << 20) + b"\r\n\r\n"
        # refused while still sending: the answer waits in the receive buffer
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)
        answer = _read_all(sock)
    assert _status(answer) == 431, answer[:300]
    assert b"http.max_header_bytes (65536 bytes)" in answer
    assert daemon.get("/healthz") == 200


def test_a_head_within_the_cap_is_answered(daemon: Daemon) -> None:
    with _connect(daemon) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 30_000
                     + b"\r\nConnection: close\r\n\r\n")
        assert _status(_read_all(sock)) == 200


# -- 2: deadlines ------------------------------------------------------------------------------------------------

def test_an_idle_connection_is_closed(daemon: Daemon) -> None:
    """A connection that never sends a byte is closed (before, it stayed open for good)."""
    with _connect(daemon) as sock:
        assert _read_all(sock) == b""


def test_a_head_that_trickles_in_is_cut_off_with_408(daemon: Daemon) -> None:
    """A slowloris client: a header line every 0.2 s, for longer than http.header_timeout."""
    with _connect(daemon) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed = False
        for i in range(int(WAIT_S / 0.2)):
            try:
                sock.sendall(b"X-Slow-%d: b\r\n" % i)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.2)
        answer = _read_all(sock)
    assert closed or answer, "the server kept reading a head that never ends"
    assert _status(answer) == 408, answer
    assert b"http.header_timeout (1 s)" in answer


def test_a_body_that_trickles_in_is_cut_off_with_408(daemon: Daemon) -> None:
    """An authenticated POST that promises 1,000 bytes and sends one: 408 after http.body_timeout."""
    with _connect(daemon) as sock:
        sock.sendall(b"POST /v1/detectors/web/records HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                     + daemon.token.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[")
        answer = _read_all(sock)
    assert _status(answer) == 408, answer
    assert b"http.body_timeout (2 s)" in answer
    assert daemon.get("/healthz") == 200


def test_a_kept_alive_connection_serves_several_requests(daemon: Daemon) -> None:
    """The deadlines leave ordinary keep-alive alone: three requests on one connection, 0.5 s apart."""
    with _connect(daemon) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                chunk = sock.recv(4096)
                assert chunk, f"closed after {answer!r}"
                answer += chunk
            assert _status(answer) == 200
            time.sleep(0.5)


# -- 3: the Host check -----------------------------------------------------------------------------------------

def _get_with_host(daemon: Daemon, host: bytes, path: bytes = b"/v1/status") -> bytes:
    with _connect(daemon) as sock:
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        return _read_all(sock)


def test_the_daemon_answers_no_foreign_host_while_reads_are_open(daemon: Daemon) -> None:
    """A page on evil.example rebinding its name to 127.0.0.1 sends `Host: evil.example`: refused, with a
    message naming the key that would allow it. Before, any Host read every record."""
    refused = _get_with_host(daemon, b"evil.example:%d" % daemon.port)
    assert _status(refused) == 400
    assert b"http.allowed_hosts" in refused and b"evil.example" in refused
    assert b'"detectors"' not in refused
    for host in (b"127.0.0.1:%d" % daemon.port, b"localhost:%d" % daemon.port, b"[::1]:%d" % daemon.port,
                 b"LOCALHOST", b"10.0.0.7", b"vigil.example", b"a.corp.example:80"):
        assert _status(_get_with_host(daemon, host)) == 200, host
    for host in (b"corp.example", b"vigil.example.evil.example", b"localhost.evil.example"):
        assert _status(_get_with_host(daemon, host)) == 400, host


@pytest.fixture
def runtime_of(tmp_path: Path) -> Iterator[Any]:
    runtimes: list[Runtime] = []

    def build(**http: Any) -> Runtime:
        path = write_config_file(tmp_path / f"config-{len(runtimes)}.toml",
                                 config_text(heading(http=http), detector("web", WEB_FEATURES)))
        runtime = build_runtime(load_config(path), CollectorRegistry(), with_process_metrics=False)
        runtimes.append(runtime)
        return runtime

    yield build
    for runtime in runtimes:
        runtime.vigil.repo.dispose()


def test_the_host_check_guards_only_open_reads(runtime_of: Any) -> None:
    """What `vigil run` serves (`server_app`): with open reads TestClient's `Host: testserver` is refused; with
    `read_requires_token` (a rebinding page has no token) every Host is answered."""
    open_reads = TestClient(server_app(runtime_of()))
    assert open_reads.get("/healthz").status_code == 400
    assert open_reads.get("/healthz", headers={"Host": "localhost:8321"}).status_code == 200
    guarded = runtime_of(read_requires_token=True)
    token = TestClient(server_app(guarded))
    assert token.get("/healthz").status_code == 200
    assert token.get("/v1/status").status_code == 401
    assert token.get("/v1/status", headers={"Authorization": f"Bearer {guarded.token}"}).status_code == 200


def test_a_bind_beyond_loopback_allows_its_own_names(runtime_of: Any) -> None:
    """Bound to a name (not loopback), the API answers that name and this machine's host name."""
    app = TestClient(server_app(runtime_of(host="vigil-box.internal")))
    assert app.get("/healthz", headers={"Host": "vigil-box.internal:8321"}).status_code == 200
    assert app.get("/healthz", headers={"Host": f"{socket.gethostname()}:8321"}).status_code == 200
    assert app.get("/healthz", headers={"Host": "evil.example"}).status_code == 400


def test_allowed_hosts_are_validated(tmp_path: Path) -> None:
    from detector.errors import ConfigError

    path = write_config_file(tmp_path / "config.toml", config_text(
        heading(http={"allowed_hosts": ["ok.example", "http://bad.example/"]}), detector("web", WEB_FEATURES)))
    named = r"http\.allowed_hosts\.1: 'http://bad\.example/' is not a host name.*\(got 'http://bad\.example/'\)"
    with pytest.raises(ConfigError, match=named):
        load_config(path)


def _config_check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detector.cli.main", "config", "check", "--config", str(config)],
                          cwd=REPO, env=daemon_env(), capture_output=True, text=True, timeout=120, check=False)


def test_config_check_warns_about_an_api_beyond_loopback(tmp_path: Path) -> None:
    """0.0.0.0 with open reads: ok (exit 0), with a warning that reads are open and the token travels in clear;
    with read_requires_token only the clear-text warning; loopback: no warning."""
    results = {}
    for name, http in {"open": {"host": "0.0.0.0"}, "token": {"host": "0.0.0.0", "read_requires_token": True},
                       "loopback": {"host": "127.0.0.1"}}.items():
        config = write_config_file(tmp_path / f"{name}.toml", config_text(
            heading(port=8321, http=http), detector("web", WEB_FEATURES)))
        results[name] = _config_check(config)
    for result in results.values():
        assert result.returncode == 0, result.stderr
        assert ": ok; detectors: web (http)" in result.stdout
    assert "reads are open" in results["open"].stderr and "http.read_requires_token = true" in results["open"].stderr
    assert "clear text over plain HTTP" in results["open"].stderr
    assert "clear text over plain HTTP" in results["token"].stderr
    assert "reads are open" not in results["token"].stderr
    assert results["loopback"].stderr == ""


# -- 7: a port in use --------------------------------------------------------------------------------------------

def test_a_taken_port_is_named_and_the_daemon_exits_at_once(tmp_path: Path) -> None:
    """Another process listens on the port: `vigil run` exits non-zero within WAIT_S * 2 s, names the port, and
    neither started its jobs nor claimed to listen. Before, it logged "HTTP API listening", started the jobs,
    and then (a job running) hung, deaf to SIGTERM."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _config(tmp_path / "config.toml", port)
        log = tmp_path / "run.log"
        with log.open("wb") as out:
            process = subprocess.Popen(vigil_run(config), cwd=REPO, env=daemon_env(), stdout=out,
                                       stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=2 * WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"vigil run still running {2 * WAIT_S} s after start on a taken port:\n{log.read_text()}")
    text = log.read_text()
    assert code != 0, text
    assert f"cannot listen on 127.0.0.1:{port}" in text and "another process listens on that port" in text, text
    assert "HTTP API listening" not in text
    assert "daemon started" not in text


# -- 10: the docs pages, and a lone surrogate in a 422 ---------------------------------------------------------

def test_the_cdn_docs_pages_are_off_unless_enabled(runtime_of: Any) -> None:
    default = TestClient(create_app(runtime_of(), manage_jobs=False))
    assert default.get("/docs").status_code == 404
    assert default.get("/redoc").status_code == 404
    assert default.get("/openapi.json").status_code == 200
    enabled = TestClient(create_app(runtime_of(api_docs=True), manage_jobs=False))
    assert enabled.get("/docs").status_code == 200
    assert enabled.get("/redoc").status_code == 200


UNENCODABLE = [
    ("/v1/outliers/1/review", b'{"verdict": "confirmed", "note": "bad \\ud800 text"}', "body.note"),
    ("/v1/outliers/1/review", b'{"verdict": "\\udfff"}', "body.verdict"),
    ("/v1/outliers/review", b'{"ids": [1], "verdict": "dismissed", "reviewer": "\\ud83d"}', "body.reviewer"),
    ("/v1/detectors/web/maintenance",
     b'{"start": "2025-03-03T00:00:00Z", "end": "2025-03-04T00:00:00Z", "reason": "\\ud800"}', "body.reason"),
    ("/v1/detectors/web/maintenance", b'{"start": "\\ud800", "end": "2025-03-04T00:00:00Z"}', "body.start"),
    ("/v1/outliers/review", b'{"ids": [1e400], "verdict": "confirmed"}', "body.ids.0"),        # inf
    ("/v1/outliers/review", b'{"ids": [NaN], "verdict": "confirmed"}', "body.ids.0"),
]
UNENCODABLE_IDS = ["note", "verdict", "reviewer", "reason", "start", "inf", "nan"]


@pytest.mark.parametrize(("path", "body", "named"), UNENCODABLE, ids=UNENCODABLE_IDS)
def test_an_unencodable_input_gets_a_422_that_names_the_field(runtime_of: Any, path: str, body: bytes,
                                                               named: str) -> None:
    """JSON may spell a lone surrogate (`\\ud800`), which UTF-8 cannot encode, or a number that is inf
    (`1e400`) or nan, which JSON cannot write: FastAPI's handler echoed the input back and failed (500). Now:
    422, the answer written whatever the input, the field named."""
    runtime = runtime_of()
    client = TestClient(create_app(runtime, manage_jobs=False), raise_server_exceptions=False)
    response = client.post(path, content=body, headers={"Authorization": f"Bearer {runtime.token}",
                                                        "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["error"].startswith(f"invalid request: {named}: "), payload
    assert [".".join(map(str, e["loc"])) for e in payload["detail"]] == [named]
