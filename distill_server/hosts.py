"""Addresses: which hosts are this machine's own (the server binds them without an API key,
and the guard accepts them as ``Host`` headers)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
