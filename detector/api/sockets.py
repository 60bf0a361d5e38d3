"""The API's listening sockets, opened before anything else of the daemon starts (this module imports no
more than the config, so that a taken port is reported within a second of `vigil run`)."""

from __future__ import annotations

import socket

from detector.config import HttpConfig
from detector.errors import ListenError

__all__ = ["listen"]

_BACKLOG = 2048


def listen(http: HttpConfig) -> list[socket.socket]:
    """Sockets bound to `http.host`:`http.port` (every address the host resolves to) and listening; connections
    wait in the backlog until the server starts. `ListenError` names the address when it cannot listen (a port
    in use, an address not of this machine), before anything else of the daemon has started."""
    try:
        infos = socket.getaddrinfo(http.host or None, http.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(http.host, http.port, exc) from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _name, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:       # as asyncio does: an IPv6 socket does not take the IPv4 port too
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(http.host, http.port, exc) from None
    return sockets
