"""A guard that blocks network access at the socket level while third-party constructors run.

Some zoo entries fetch weights inside their constructor (``timm.create_model(..., pretrained=True)``,
``torchvision.models.resnet50(pretrained=True)``). Under :func:`no_network` every DNS lookup or
connect raises :class:`NetworkBlocked` before a packet leaves the machine; the attempts are
recorded, so a caller learns about them even if the third-party code swallows the exception.
Files already in a local cache load as usual (no socket needed).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Iterator

__all__ = ["NetworkBlocked", "no_network"]

_lock = threading.Lock()


class NetworkBlocked(ConnectionError):
    """Raised instead of opening a network connection under :func:`no_network`."""


#: (owner, attribute, what the error calls it): the socket entry points that ``no_network`` blocks.
_PATCHED = ((socket, "getaddrinfo", "getaddrinfo"), (socket, "create_connection", "create_connection"),
            (socket.socket, "connect", "connect"), (socket.socket, "connect_ex", "connect"))


@contextlib.contextmanager
def no_network() -> Iterator[list[str]]:
    """Block ``socket.getaddrinfo``/``create_connection``/``socket.connect`` inside the block.

    Yields the list of attempted destinations (empty if nothing tried to go online).
    """
    attempts: list[str] = []

    def blocked(what: str):
        def fn(*args, **kwargs):
            target = args[1] if what == "connect" and len(args) > 1 else (args[0] if args else "?")
            attempts.append(f"{what} {target}")
            raise NetworkBlocked(f"ebmlens blocked a network access ({what} {target}); it runs offline")
        return fn

    with _lock:
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in _PATCHED]
        for owner, name, what in _PATCHED:
            setattr(owner, name, blocked(what))
    try:
        yield attempts
    finally:
        with _lock:
            for owner, name, original in saved:
                setattr(owner, name, original)
