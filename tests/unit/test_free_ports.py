"""`free_port` hands out ports no client connection can take first (imagegen/stack/ports.py)."""

from __future__ import annotations

from pathlib import Path

from imagegen.stack.ports import free_port


def test_free_ports_are_distinct_and_below_the_ephemeral_range_apart_from_seaweedfs_pairs() -> None:
    # A port from bind(0) is an ephemeral one, which a stack's outgoing connections could take
    # before its gateway bound it; SeaweedFS's pairs use 20000-22767 and 30000-32767.
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    ephemeral_low = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(23000 <= port <= 29999 and port < ephemeral_low for port in ports)
