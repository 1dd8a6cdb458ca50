"""The path from traced tensors to the store, overlapped with the model.

While the model runs batch *i+1*, batch *i* is copied to the host, cast to
the storage dtype, checked and written by one background thread:

1. :func:`to_host` (model thread, right after the trace): drop the padding
   where the tensors live and start the device→host copies; on CUDA they go
   to pinned buffers with ``non_blocking=True`` and a recorded event, so the
   model does not wait for them.
2. :func:`stored_rows` (writer thread): wait for the copies, encode to the
   storage dtype (:func:`activation_cache.schema.encode_hidden`), check that
   every value is finite.
3. :class:`BackgroundWriter` runs the store appends on its thread with at
   most ``depth`` windows queued, so memory stays bounded, and hands any
   failure of the thread back to the model thread at its next step.

The commit rule of the store is unchanged: ``n_committed`` moves only after a
window's rows are flushed, so ``kill -9`` loses at most the windows in flight.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from activation_cache import schema
from activation_cache.running_stats import RowStats, row_norms
from activation_cache.tracer import Traced

__all__ = ["BackgroundWriter", "HostBatch", "NonFinite", "stored_rows", "to_host"]


class NonFinite(ValueError):
    """Hidden states of one layer that are not finite, in the model or after the cast to the store dtype."""

    def __init__(self, layer: str, in_model: bool):
        super().__init__(layer)
        self.layer, self.in_model = layer, in_model


@dataclass
class HostBatch:
    """One traced batch on its way to the store.

    index:     prompt indices of the rows, in row order
    tokens:    per row, int32 (T_s,) (padding dropped)
    generated: per row, bool (T_s,)
    hidden:    layer -> (sum_s T_s, D) rows in the model's dtype, on the CPU
               (pinned and maybe still being copied on CUDA: see :meth:`wait`)
    """

    index: tuple[int, ...]
    tokens: list[np.ndarray]
    generated: list[np.ndarray]
    hidden: dict[str, torch.Tensor]
    _pending: list[Any] = field(default_factory=list, repr=False)
    #: layer -> (mean, m2 float64 (D,), norms float32 (sum_s T_s,)) of the rows as stored, computed on
    #: the model's device by :func:`to_host` (copied like ``hidden``); see :meth:`row_stats`
    stats: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def row_stats(self) -> tuple[dict[str, RowStats], dict[str, np.ndarray]]:
        """The batch's statistics and row norms per layer (after :meth:`wait`)."""
        n = sum(self.lengths)
        stats = {k: RowStats(n, mean.numpy(), m2.numpy()) for k, (mean, m2, _) in self.stats.items()}
        return stats, {k: norms.numpy() for k, (_, _, norms) in self.stats.items()}

    def wait(self) -> None:
        """Block until the device→host copies are complete (no-op for CPU models)."""
        for event, _source in self._pending:
            event.synchronize()
        self._pending.clear()  # also releases the device tensors kept alive for the copy

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]


def to_host(traced: Traced, index: tuple[int, ...], dtype: str | None = None) -> HostBatch:
    """Drop the padding of a traced batch where it lives and start copying the stored rows to the host.

    With the store's ``dtype``, also the rows' running statistics (:attr:`HostBatch.stats`),
    computed where the rows are: on a GPU they cost microseconds there instead of a pass
    over the rows on the writer thread.
    """
    valid = traced.valid.cpu()
    ids, gen = traced.input_ids.cpu(), traced.generated.cpu()
    tokens = [ids[b][valid[b]].to(torch.int32).numpy() for b in range(valid.shape[0])]
    generated = [gen[b][valid[b]].numpy() for b in range(valid.shape[0])]
    flat = valid.reshape(-1).nonzero().squeeze(1)
    hidden, stats, pending = {}, {}, []
    for name, h in traced.hidden.items():
        rows = h.reshape(-1, h.shape[-1]).index_select(0, flat.to(h.device))
        if dtype is not None and rows.device.type != "mps":  # MPS has no float64: the writer computes them
            stored = rows.to(schema.torch_dtype(dtype))  # the values the store will hold
            var, mean = torch.var_mean(stored.to(torch.float64), dim=0, correction=0)
            stats[name] = (mean, var * len(rows), row_norms(stored))
        hidden[name] = _copy_to_host(rows, pending)
        if name in stats:
            stats[name] = tuple(_copy_to_host(t, pending) for t in stats[name])
    return HostBatch(tuple(index), tokens, generated, hidden, pending, stats)


def _copy_to_host(t: torch.Tensor, pending: list) -> torch.Tensor:
    """``t`` on the host: from CUDA into pinned memory without waiting (the event goes to ``pending``)."""
    if t.device.type != "cuda":
        return t.cpu()  # mps and others: a plain (blocking) copy
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(t.device))
    pending.append((event, t))
    return host


def stored_rows(batch: HostBatch, dtype: str) -> dict[str, np.ndarray]:
    """Layer -> rows as a ``dtype`` store holds them; raises :class:`NonFinite` for inf/NaN values."""
    batch.wait()
    out = {}
    for name, rows in batch.hidden.items():
        stored = schema.encode_hidden(rows, dtype)
        if not schema.all_finite(stored, dtype):
            raise NonFinite(name, in_model=not bool(torch.isfinite(rows).all()))
        out[name] = stored
    return out


_STOP = object()


class BackgroundWriter:
    """Run ``write(item)`` for each submitted item on one background thread, in order.

    At most ``depth`` items wait in the queue (``submit`` blocks beyond that).
    With ``threaded=False`` each ``submit`` writes at once in the caller's
    thread (for CPU models: a second busy thread would take a core from the
    model's own intra-op threads).
    The first exception of ``write`` stops the thread; it is raised again in
    the caller's thread by the next :meth:`submit` or by :meth:`close`, and
    items still queued are dropped (they were never committed).
    """

    def __init__(self, write: Callable[[Any], None], depth: int = 1, name: str = "ret-store-writer",
                 threaded: bool = True):
        self._write = write
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True) if threaded else None
        if self._thread is not None:
            self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue  # drain without writing after a failure
            try:
                self._write(item)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, item: Any) -> None:
        """Queue ``item`` for writing; raises the thread's failure, if any, instead."""
        if self._thread is None:
            self._write(item)
            return
        self._raise()
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                self._raise()  # the thread died while we waited for room

    def close(self) -> None:
        """Write what is queued, stop the thread, then raise its failure, if any."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise()
