"""What the HTTP server puts in front of the app: limits and deadlines on each connection, and the Host check.

`guarded_protocol` is uvicorn's httptools protocol with three guards a client cannot get past:

* the request head (request line and headers) may hold at most `http.max_header_bytes`; past that the answer
  is 431 and the connection closes (uvicorn alone kept every byte of a 400 MB header block);
* the head must be complete within `http.header_timeout` of the connection opening or of the previous answer
  (an idle connection, or one trickling its headers, is closed: 408 when part of a head came);
* the body must be complete within `http.body_timeout` of the head (408, then close).

`HostCheck` answers only requests whose Host is a loopback name, an IP address or an allowed name: while reads
are open a page in a browser on this machine must not read the API through a DNS name it rebinds to
127.0.0.1 (DNS rebinding), and such a page always sends its own name as the Host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections.abc import Callable, Sequence
from typing import ClassVar

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from detector.config import HttpConfig

__all__ = ["HostCheck", "allowed_host_names", "guarded_protocol"]

logger = logging.getLogger(__name__)

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size cap on the request head and deadlines on head and body."""

    max_header_bytes: ClassVar[int]
    header_timeout: ClassVar[float]
    body_timeout: ClassVar[float]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._in_head = True            # reading a request head (or waiting for one), not a body
        self._head_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)  # type: ignore[arg-type]
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_header_bytes and not self.transport.is_closing():
            logger.warning("request refused: head too large", extra={"client": _client(self.client),
                                                                     "limit_bytes": self.max_header_bytes})
            self._refuse(431, f"the request line and headers exceed http.max_header_bytes "
                              f"({self.max_header_bytes} bytes)")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._arm(self.body_timeout, self._body_overdue)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._in_head = True
        self._await_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_head()

    # -- deadlines --------------------------------------------------------------------------------------------
    def _idle(self) -> bool:
        """No request is being answered: the connection waits for (or reads) the next request head."""
        return self._in_head and (self.cycle is None or self.cycle.response_complete)

    def _await_head(self) -> None:
        if self._idle() and self._deadline is None and not self.transport.is_closing():
            self._arm(self.header_timeout, self._head_overdue)

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_overdue(self) -> None:
        self._deadline = None
        if not self._idle() or self.transport.is_closing():
            return
        if self._head_bytes:
            self._refuse(408, f"the request head did not arrive within http.header_timeout "
                              f"({self.header_timeout:g} s)")
        else:
            self.transport.close()          # idle: nothing to answer

    def _body_overdue(self) -> None:
        self._deadline = None
        if self._in_head or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self.transport.close()
            return
        if cycle is not None:               # the app reading the body sees the client gone
            cycle.disconnected = True
            cycle.message_event.set()
        self._refuse(408, f"the request body did not arrive within http.body_timeout ({self.body_timeout:g} s)")

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with an error body, then close the connection."""
        body = json.dumps({"error": message}).encode()
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body)))
        self.transport.write(head + body)
        self.transport.close()


def _client(client: tuple[str, int] | None) -> str | None:
    return f"{client[0]}:{client[1]}" if client else None


def guarded_protocol(http: HttpConfig) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's `http=`, with `http`'s head cap and deadlines."""
    return type("VigilHttpProtocol", (_GuardedProtocol,), {
        "max_header_bytes": http.max_header_bytes, "header_timeout": http.header_timeout,
        "body_timeout": http.body_timeout})


# -- Host ------------------------------------------------------------------------------------------------------

def allowed_host_names(http: HttpConfig) -> list[str]:
    """The host names (besides `localhost` and IP addresses) the API answers while reads are open:
    `http.allowed_hosts`, and when it binds beyond loopback the bound name and this machine's host name."""
    names = list(http.allowed_hosts)
    if not http.binds_loopback:
        for name in (http.host, socket.gethostname()):
            if name and name not in ("0.0.0.0", "::") and name.lower() not in names:
                names.append(name.lower())
    return names


def _host_name(header: str) -> str:
    """The name of a Host header value: without the port, brackets of an IPv6 address or a final dot."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    name, colon, port = value.rpartition(":")
    if colon and port.isdigit():
        value = name
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostCheck:
    """Pure ASGI middleware: a request whose Host is not a loopback name, an IP address or one of `names`
    (`*.example.com`: any subdomain) gets 400 and never reaches the app. A request without a Host (HTTP/1.0)
    passes: browsers always send one."""

    def __init__(self, app: ASGIApp, names: Sequence[str]) -> None:
        self.app = app
        self._exact = {n.rstrip(".") for n in names if not n.startswith("*.")} | {"localhost"}
        self._suffixes = tuple(n[1:].rstrip(".") for n in names if n.startswith("*."))

    def allows(self, header: str) -> bool:
        name = _host_name(header)
        return name in self._exact or _is_ip(name) or (bool(self._suffixes) and name.endswith(self._suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        if host is None or self.allows(host):
            await self.app(scope, receive, send)
            return
        message = (f"Host {host[:100]!r} is not allowed: while reads are open (http.read_requires_token = false) "
                   "the API answers only localhost, IP addresses and the names in http.allowed_hosts")
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
