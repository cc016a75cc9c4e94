"""Double-buffered batch output: one background thread writes a batch's shard (and its PNGs) while the
next batch samples.

The queue holds one batch: the sampling loop hands batch ``b`` over and starts batch ``b + 1`` at once;
handing over ``b + 1`` waits until ``b`` is written. So at most two finished batches wait in host
memory, the device is not idle while files are written, and the device-to-host copies of images and
energies (``.cpu()``) happen in the writer, not in the loop. A writer's error is raised in the loop at
the next hand-over (or at :meth:`BatchWriter.close`), and nothing more is written after it. Each
shard is still atomic (:func:`ebmlens._io.atomic_save_npz`): a killed run loses at most the batches
in flight. :meth:`close` (also on an exception in the loop, e.g. Ctrl-C) writes what was handed
over, then joins the thread.

>>> w = BatchWriter(); seen = []
>>> w.submit(seen.append, 1); w.submit(seen.append, 2); w.close(); seen
[1, 2]
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

__all__ = ["BatchWriter"]

_STOP = object()


class BatchWriter:
    """A single writer thread with a bounded queue of one job; errors propagate to the caller."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="ebmlens-shard-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            if self._error is None:  # after a failure, drain without writing
                try:
                    fn, args = job
                    fn(*args)
                except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                    self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the writer; blocks while the previous job still waits; raises an
        earlier job's error."""
        self._raise()
        if not self._thread.is_alive():
            raise RuntimeError("the shard writer was closed")
        self._jobs.put((fn, args))

    def close(self) -> None:
        """Write what was handed over, stop the thread, raise a job's error (if any)."""
        if self._thread.is_alive():
            self._jobs.put(_STOP)
            self._thread.join()
        self._raise()
