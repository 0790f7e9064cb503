"""Is an address one of this host's?  One answer for the library and the monitor.

A connect can only reach a socksdirect listener if its destination is an
address of this host (in this network namespace): a loopback address, the
unspecified address (which Linux routes to the host itself), or an address
of one of its interfaces.  The last is asked of the kernel by binding a
throwaway UDP socket to it, which succeeds exactly for local addresses.
Answers are cached (bounded: the hosts come from clients).
"""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["is_local_address"]

_CACHE_MAX = 256
_cache: dict[str, bool] = {}


def is_local_address(host: str) -> bool:
    """True if numeric *host* (``"127.0.0.1"``, ``"::1%lo"``) is an address of this host."""
    known = _cache.get(host)
    if known is not None:
        return known
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False   # not numeric: callers resolve names first
    known = ip.is_loopback or ip.is_unspecified
    if not known:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((host, 0))
                known = True
            except OSError:
                known = False
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[host] = known
    return known
