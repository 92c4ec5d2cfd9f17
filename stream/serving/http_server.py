"""The scorer's HTTP/1.1 layer: ``POST /score``, ``GET /healthz``, ``GET /metrics`` on one port.

Written on the stdlib's server with its own request-head parser, because the email
package's header parsing cost a quarter of a request's time under the GIL. Its bounds
(a deadline per request, a connection cap, header and body limits) keep a hostile client from
holding threads or memory; every error is a JSON body, never a traceback.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from stream import schemas
from stream.serving.requests import SCORE_LATENCY, SCORE_REQUESTS, BadRequest
from stream.serving.scorer import Scorer

log = logging.getLogger(__name__)

#: Seconds a connection has to deliver a whole request (head and body), from its opening or from the
#: previous response: a deadline, not a per-read timeout, so a client trickling a byte at a time cannot hold
#: a connection (and its thread) for ever.
READ_TIMEOUT = 10.0
#: Connections served at once; one more is answered 503 and closed instead of taking a thread.
MAX_CONNECTIONS = 256

REFUSED_CONNECTIONS = Counter(
    "recsys_scorer_refused_connections_total", "HTTP connections answered 503 and closed: over the connection cap.")
_ANSWERED, _ANSWERED_IN = SCORE_REQUESTS.labels("http", "ok"), SCORE_LATENCY.labels("http")


def decode_request(body: bytes) -> schemas.ScoreRequest:
    """A validated request body, or ``BadRequest`` with the status that says what is wrong with it."""
    try:
        return schemas.decode("score-requests", body)
    except schemas.InvalidMessage as exc:
        if exc.reason == "oversized":
            raise BadRequest(f"request body is {len(body)} bytes, over {schemas.MAX_EVENT_BYTES}", 413) from None
        if exc.reason == "schema":
            raise BadRequest(f"invalid request: {exc.detail}", 422) from None
        raise BadRequest(f"request body: {exc.detail}") from None     # malformed_json: not JSON, or nested too deep


#: Request header limits, as the stdlib's (http.client): longest line, most header lines.
MAX_HEADER_LINE = 65536
MAX_HEADERS = 100


class RequestHeaders(dict):
    """Request headers by lower-case name; the first of repeated names wins (as ``email.message.Message.get``).

    The stdlib builds an ``email.message.Message`` per request through the email package's
    feed parser: a quarter of a scoring request's time under the GIL went there.
    """

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str | None:
        return dict.get(self, name.lower())


class ScoringHTTPServer(ThreadingHTTPServer):
    """The stdlib threading server with bounds: concurrent connections capped, errors kept off stderr.

    A client that hangs up or times out is routine, not a traceback; a connection over the
    cap gets a JSON 503 and is closed at once rather than a thread of its own. Handlers
    reach the scorer and the health report through the server.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], scorer: Scorer, health: Callable[[], dict],
                 read_timeout: float = READ_TIMEOUT, max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__(address, ScoringHandler)
        self.scorer = scorer
        self.health = health
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        #: Connections being served now (each holds a thread until it closes or times out).
        self.open_connections = 0
        self._count = threading.Lock()

    def _take_slot(self) -> bool:
        with self._count:
            if self.open_connections >= self.max_connections:
                return False
            self.open_connections += 1
            return True

    def _free_slot(self) -> None:
        with self._count:
            self.open_connections -= 1

    def process_request(self, request, client_address) -> None:
        if not self._take_slot():
            REFUSED_CONNECTIONS.inc()
            try:
                body = json.dumps({"error": f"over {self.max_connections} open connections; retry"}).encode()
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._free_slot()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._free_slot()

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError, TimeoutError)):
            log.debug("client %s went away", client_address)
            return
        log.exception("HTTP request from %s failed", client_address)


class ScoringHandler(BaseHTTPRequestHandler):
    """``POST /score``, ``GET /healthz`` and ``GET /metrics``, every error answered as JSON."""

    server: ScoringHTTPServer
    raw_requestline: bytes          # set by the stdlib's handle_one_request
    protocol_version = "HTTP/1.1"
    # A response goes out in one write (``_send``); should anything write twice, Nagle's
    # algorithm and the client's delayed ACK would add ~40 ms to a keep-alive response.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.deadline = time.monotonic() + self.server.read_timeout
        # Every read of the request waits at most until the deadline (see ``_DeadlineReader``).
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self))

    def handle_one_request(self) -> None:
        super().handle_one_request()
        self.deadline = time.monotonic() + self.server.read_timeout     # the next request's, from this answer

    def parse_request(self) -> bool:
        """The request line and headers, parsed without the email package (see ``RequestHeaders``).

        Only what this API speaks: ``METHOD /path HTTP/1.0`` or ``HTTP/1.1``; anything else is
        answered 400 (505 for other versions), too long or too many header lines 431.
        """
        self.command = None
        self.request_version = self.default_request_version
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3:
            self.send_error(400, f"bad request line {self.requestline[:200]!r}")
            return False
        command, path, version = words
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            bad = not version.startswith("HTTP/")
            self.send_error(400 if bad else 505, f"unsupported protocol version {version[:40]!r}")
            return False
        self.command, self.path, self.request_version = command, path, version
        headers = RequestHeaders()
        while True:
            try:
                line = self.rfile.readline(MAX_HEADER_LINE + 1)
            except TimeoutError:
                self.send_error(408, f"request head not received within {self.server.read_timeout:g}s")
                return False
            if len(line) > MAX_HEADER_LINE:
                self.send_error(431, "header line too long")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            if len(headers) >= MAX_HEADERS:
                self.send_error(431, f"more than {MAX_HEADERS} headers")
                return False
            name, sep, value = str(line, "iso-8859-1").partition(":")
            if not sep or not name or name != name.strip():
                self.send_error(400, f"malformed header line {line[:100]!r}")
                return False
            name = name.lower()
            value = value.strip()
            if name in headers and name in ("content-length", "transfer-encoding") and headers[name] != value:
                self.send_error(400, f"conflicting {name} headers")
                return False
            headers.setdefault(name, value)
        self.headers = headers      # type: ignore[assignment]  # read through .get, as the stdlib's Message
        connection = headers.get("connection", "").lower()
        self.close_connection = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        if headers.get("expect", "").lower() == "100-continue" and version == "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def log_message(self, fmt: str, *args) -> None:   # access log at debug, not on stderr per request
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        """Status line, headers and body in one write (one syscall, one packet for a small answer);
        no Date or Server header and the access log only at debug, off the hot path."""
        if log.isEnabledFor(logging.DEBUG):
            self.log_request(status)
        close = "Connection: close\r\n" if self.close_connection else ""
        head = (f"{self.protocol_version} {status} {self.responses.get(status, ('',))[0]}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{close}\r\n")
        self.wfile.write(head.encode("latin-1") + body)

    def _error(self, status: int, message: str, close: bool = False) -> None:
        """A JSON error; ``close`` when a body was left unread (its bytes must not be taken for a request)."""
        if close:
            self.close_connection = True
        self._send(status, json.dumps({"error": message}).encode())

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Every error the stdlib raises itself (bad request line, headers too long, unknown method) as JSON."""
        self.close_connection = True
        # A request line the parser could not read leaves HTTP/0.9, which would send no status line.
        self.request_version = self.protocol_version
        text = message or explain or self.responses.get(code, ("error",))[0]
        try:
            self._send(code, json.dumps({"error": text}).encode())
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        if self.path == "/healthz":
            health = self.server.health()
            self._send(200 if health["status"] == "ok" else 503, json.dumps(health).encode())
        elif self.path == "/metrics":
            self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
        else:
            self._error(404, f"no such path {self.path}; try POST /score, GET /healthz or GET /metrics")

    def _refuse_method(self) -> None:
        self._error(405, f"{self.command} is not served; POST /score, GET /healthz or GET /metrics", close=True)

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method  # noqa: N815

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/score":
            self._error(404, f"no such path {self.path}; POST /score", close=True)
            return
        started = time.perf_counter()
        if self.headers.get("Transfer-Encoding"):
            SCORE_REQUESTS.labels("http", "invalid").inc()
            self._error(411, "chunked bodies are not accepted; send Content-Length", close=True)
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError
        except ValueError:
            SCORE_REQUESTS.labels("http", "invalid").inc()
            self._error(400, "Content-Length must be a non-negative integer", close=True)
            return
        if length > schemas.MAX_EVENT_BYTES:
            SCORE_REQUESTS.labels("http", "invalid").inc()
            self._error(413, f"request body is {length} bytes, over {schemas.MAX_EVENT_BYTES}", close=True)
            return
        try:
            raw = self.rfile.read(length)
        except TimeoutError:
            SCORE_REQUESTS.labels("http", "invalid").inc()
            self._error(408, f"request body not received within {self.server.read_timeout:g}s", close=True)
            return
        if len(raw) < length:            # the client hung up mid-body
            self.close_connection = True
            return
        try:
            response = self.server.scorer.score(decode_request(raw))
        except BadRequest as exc:
            SCORE_REQUESTS.labels("http", "invalid").inc()
            self._error(exc.status, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - answered and counted, never a dropped connection
            log.exception("scoring failed")
            SCORE_REQUESTS.labels("http", "error").inc()
            self._error(500, f"internal error: {type(exc).__name__}")
            return
        self._send(200, schemas.encode(response))
        _ANSWERED.inc()
        _ANSWERED_IN.observe(time.perf_counter() - started)


class _DeadlineReader(io.RawIOBase):
    """The connection's bytes, each read allowed only the time left until the handler's deadline."""

    def __init__(self, sock: socket.socket, handler: ScoringHandler) -> None:
        self.sock, self.handler = sock, handler

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request deadline passed")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)

