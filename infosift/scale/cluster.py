"""Joining a Ray cluster: the one place infosift's engines call ``ray.init``.

Addresses: None starts a local Ray on this machine (all its cores), ``"auto"`` joins the cluster that
``ray start --head`` started here, ``host:port`` (the head's GCS port, 6379 unless told otherwise) or
``ray://host:10001`` (Ray Client) names one. Ray itself retries an address with nothing behind it for
minutes (measured here: still retrying after 2 min); a TCP probe first turns that into one line at once.
"""

from __future__ import annotations

import socket

from infosift.errors import ClusterError

LOCAL = (None, "auto", "local")


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """ClusterError 'cannot reach Ray at <address>: <why>' unless something listens at a host:port address."""
    if address in LOCAL:
        return
    host, sep, port = str(address).removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"cannot reach Ray at {address}: expected host:port, ray://host:port, 'auto' or null")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise ClusterError(f"cannot reach Ray at {address}: {why} (start one with `ray start --head`)") from None


def connect(address: str | None) -> bool:
    """Join (None: start) the Ray cluster at ``address`` unless this process already is connected.

    Returns True when this call connected (the caller may ``ray.shutdown()`` when done), False when a
    connection was there already (a test's cluster, a Prefect task runner's), which is then used as is.
    """
    import ray

    if ray.is_initialized():
        return False
    check_address(address)
    try:
        ray.init(address=address, include_dashboard=False, logging_level="ERROR")
    except ConnectionError as e:  # 'auto' with no cluster on this machine, a dead head behind an open port
        raise ClusterError(f"cannot reach Ray at {address}: {' '.join(str(e).split())}") from None
    return True
