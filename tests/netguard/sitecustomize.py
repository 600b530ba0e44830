"""Loaded by every Python process started with PYTHONPATH=tests/netguard and REST_NETGUARD_LOG=FILE.

Refuses, and appends to FILE, every attempt to reach a non-loopback address: a socket connect (TCP or UDP) or a
name lookup of anything but localhost. It is how the tests prove a run makes no network attempt: the machine
behaves as if it were offline, and the log says who tried what.
"""

import errno
import ipaddress
import os
import socket
import traceback

_LOG = os.environ.get("REST_NETGUARD_LOG")


def _is_loopback(host) -> bool:
    if host in (None, "", "localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _record(what: str) -> None:
    stack = "".join(traceback.format_stack(limit=8)[:-2])
    with open(_LOG, "a") as f:
        f.write(f"pid {os.getpid()}: {what}\n{stack}\n")


if _LOG:
    _connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def _check(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            _record(f"connect {address}")
            raise OSError(errno.ENETUNREACH, f"network is off in this test (connect to {address})")

    def connect(self, address):
        _check(self, address)
        return _connect(self, address)

    def connect_ex(self, address):
        _check(self, address)
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host.decode() if isinstance(host, bytes) else host):
            _record(f"getaddrinfo {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"network is off in this test (lookup of {host!r})")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
