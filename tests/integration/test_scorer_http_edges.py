"""The scorer's HTTP server at its edges, over raw sockets: every refusal is JSON, nothing is left half-read.

Half-sent requests are dropped after the read timeout; a refused body that was not read
closes the connection (its bytes never come back as a second response); stdlib errors
(bad request line, headers too long, unknown methods) answer JSON; connections over the cap
get a 503 instead of a thread.
"""

from __future__ import annotations

import json
import socket

import pytest

from models.encoders import TextEncoder
from stream.serving.service import ScorerService
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


@pytest.fixture()
def service(settings, topics, encoder):
    svc = ScorerService(settings, encoder, kafka_requests=False, read_timeout=1.0, max_connections=4).start()
    yield svc
    svc.close()


def connect(service) -> socket.socket:
    host, port = service.http.server_address[:2]
    sock = socket.create_connection((host, port), timeout=5)
    return sock


def exchange(service, raw: bytes) -> tuple[int, dict, bytes, bool]:
    """(status, JSON body, headers, whether the server closed the connection after the response)."""
    sock = connect(service)
    try:
        sock.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += sock.recv(65536)
        body, extra = rest[:length], rest[length:]
        sock.settimeout(0.5)   # under the 1 s read timeout: an open keep-alive connection stays silent
        try:
            more = sock.recv(65536)
        except TimeoutError:
            more = b"(still open)"
        closed = more == b""
        assert not extra and (closed or more == b"(still open)"), f"a second response came back: {extra + more!r}"
        return int(head.split(b" ")[1]), json.loads(body), head, closed
    finally:
        sock.close()


def post(body: bytes, extra_headers: bytes = b"") -> bytes:
    return (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra_headers
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def test_refusals_are_json_and_a_refused_unread_body_closes_the_connection(service):
    status, body, head, closed = exchange(service, post(b"x" * 70_000))
    assert status == 413 and "over" in body["error"] and closed and b"Connection: close" in head
    status, body, _, closed = exchange(service, b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                                b"5\r\nhello\r\n0\r\n\r\n")
    assert status == 411 and "Content-Length" in body["error"] and closed
    status, body, _, closed = exchange(service, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
    assert status == 400 and closed
    status, body, _, closed = exchange(service, b"PUT /score HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    assert status == 405 and "PUT" in body["error"] and closed
    status, body, _, closed = exchange(service, b"GARBAGE\r\n\r\n")
    assert status == 400 and body["error"] and closed
    status, body, _, closed = exchange(service, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert status in (400, 431) and body["error"] and closed
    nested = b'{"user_id": "u", "candidates": ["a"], "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    status, body, _, closed = exchange(service, post(nested))
    assert status == 400 and "nested" in body["error"] and not closed     # read whole: keep-alive goes on


def test_a_valid_request_keeps_the_connection_alive(service):
    status, body, _, closed = exchange(service, post(json.dumps({"user_id": "u1", "candidates": ["a", "b"]}).encode()))
    assert status == 200 and body["policy_version"] == 0 and not closed


def test_a_half_sent_request_is_dropped_after_the_read_timeout(service):
    sock = connect(service)
    try:
        sock.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"user")
        sock.settimeout(10)
        answer = b""
        while chunk := sock.recv(65536):          # a JSON 408, then the server closes
            answer += chunk
        # Had the server not timed the request out (after 1 s), recv would have raised at 10 s.
        assert answer.startswith(b"HTTP/1.1 408") and b'"error"' in answer
    finally:
        sock.close()


def test_connections_over_the_cap_get_a_json_503(service):
    held = [connect(service) for _ in range(4)]
    try:
        wait_for(lambda: service.http.open_connections == 4, 10, "all four connections to be served")
        status, body, _, closed = exchange(service, post(b"{}"))
        assert status == 503 and "open connections" in body["error"] and closed
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: service.http.open_connections == 0, 10, "the closed connections to free their slots")
    status, _, _, _ = exchange(service, post(json.dumps({"user_id": "u1", "candidates": ["a"]}).encode()))
    assert status == 200


def test_the_request_parser_refuses_smuggling_shapes_versions_and_header_floods(service):
    body = json.dumps({"user_id": "u1", "candidates": ["a"]}).encode()
    status, reply, _, closed = exchange(service, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert status == 400 and "conflicting content-length" in reply["error"] and closed
    status, reply, _, closed = exchange(service, b"GET /healthz HTTP/2.0\r\n\r\n")
    assert status == 505 and closed
    flood = b"".join(b"X-%d: y\r\n" % i for i in range(101))
    status, reply, _, closed = exchange(service, b"GET /healthz HTTP/1.1\r\n" + flood + b"\r\n")
    assert status == 431 and closed
    status, reply, _, closed = exchange(service, b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n")
    assert status == 400 and closed
    # Header names are case-insensitive, and HTTP/1.0 closes unless asked to keep alive.
    status, reply, _, closed = exchange(service, b"POST /score HTTP/1.0\r\ncontent-LENGTH: " + str(len(body)).encode()
                                                 + b"\r\n\r\n" + body)
    assert status == 200 and closed


def test_a_trickling_client_is_cut_at_the_deadline_while_others_are_answered(service):
    """One byte every 0.3 s never trips a per-read timeout of 1 s; the request's deadline (1 s) cuts it."""
    sock = connect(service)
    request = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"{" * 100
    answered_meanwhile = None
    cut = False
    try:
        for i, byte in enumerate(request):
            try:
                sock.sendall(bytes([byte]))
            except OSError:             # the server closed the connection
                cut = True
                break
            if i == 1:                  # a well-behaved client is served while the trickler holds its slot
                answered_meanwhile = exchange(service, post(json.dumps({"user_id": "u1", "candidates": ["a"]}).encode()))[0]
            sock.settimeout(0.3)
            try:
                if sock.recv(65536) is not None:     # an answer (408) or the close (b"")
                    cut = True
                    break
            except TimeoutError:
                pass
    finally:
        sock.close()
    assert cut and i < len(request) - 1, f"still connected after {i + 1} bytes over {0.3 * (i + 1):.1f}s"
    assert answered_meanwhile == 200
