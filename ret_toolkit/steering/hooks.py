"""Steer a plain ``transformers`` model with PyTorch forward hooks.

::

    from ret_toolkit.steering import SteeringVector, steer

    vec = SteeringVector.load("calc_group")
    with steer(model, vec, alpha=4.0, positions="generated"):
        out = model.generate(**inputs, max_new_tokens=40)   # or a pipeline(...)

Inside the ``with`` block every target decoder block gets one forward hook that
adds ``alpha * v`` to its output hidden state (a tensor or the first element of
a tuple). With ``positions="prompt"`` / ``"generated"`` one forward pre-hook on
the model reads the KV-cache length of each forward, so the hooks know which
positions are prompt tokens: the first forward of a ``generate`` call (empty
cache) covers the prompt, later forwards continue it.

The block hooks are registered with ``prepend=True``: they run before any other
forward hook on the block, so other hooks (the user's, and the recorder
``transformers`` uses for ``output_hidden_states``) see the steered output,
which is also what the next block receives.

The hooks are removed when the block exits, also on exceptions (including an
exception raised inside ``generate``). Only the handles registered here are
removed; hooks the user registered before or after stay in place. Contexts nest:
two active ``steer`` blocks add both deltas.

Limitation: ``generate(..., use_cache=False)`` re-runs the whole sequence each
step with an empty cache, so every forward looks like a new prompt; use
``positions="all"`` there (a warning says so).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch

from activation_cache.errors import InputError
from ret_toolkit.steering.plan import SteeringPlan, Vectors, plan_steering

__all__ = ["Steering", "steer"]


def cache_length(kwargs: dict) -> int | None:
    """Tokens already in the KV cache of this forward, or None when no cache is passed."""
    cache = kwargs.get("cache")  # transformers >= 5.2x name
    if cache is None:
        cache = kwargs.get("past_key_values")  # older name
    if cache is None:
        return None
    get = getattr(cache, "get_seq_length", None)
    if callable(get):
        return int(get())
    if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:  # legacy tuple cache
        return int(cache[0][0].shape[-2])
    return None


def remove_hooks(handles: list) -> None:
    """Remove every hook handle in ``handles`` and empty the list (so a second call is a no-op)."""
    while handles:
        handles.pop().remove()


class Steering:
    """Forward hooks adding a :class:`SteeringPlan`'s deltas; a context manager.

    Use through :func:`steer`. ``attach()`` / ``remove()`` are also public for
    sessions where a ``with`` block does not fit (e.g. across notebook cells);
    ``remove()`` is idempotent.

    Attributes:
        gain: extra factor on every delta, read at each hook call (default 1.0).
            A closed-loop controller (e.g. a ``LogitsProcessor`` or stopping
            criterion watching the macrostate) can change it between decoding
            steps without re-registering hooks; 0 switches steering off. A
            float applies to the whole batch; a (B,) tensor gives one factor per
            batch row (e.g. :class:`ret_toolkit.steering.closed_loop.ClosedLoop`
            switching steering per sequence).
    """

    def __init__(self, plan: SteeringPlan):
        self.plan = plan
        self._handles: list = []
        self._prompt_len: int | None = None
        self._past: int = 0
        self._span: tuple[int, int] | None = None
        self._warned = False
        self.gain = 1.0

    @property
    def active(self) -> bool:
        """True while the hooks are registered."""
        return bool(self._handles)

    # ------------------------------------------------------------ hooks
    def _pre_forward(self, module, args, kwargs):
        past = cache_length(kwargs)
        self._past = past or 0
        self._span = None  # computed by the first block hook of this forward
        if kwargs.get("use_cache") is False and not self._warned:
            self._warned = True
            warnings.warn(
                f"steer(positions={self.plan.positions!r}): forward with use_cache=False; every forward "
                "counts as a new prompt, so prompt and generated tokens are not told apart "
                "(use the KV cache or positions='all')", stacklevel=2)

    def _positions_span(self, seq_len: int) -> tuple[int, int]:
        """Slice of this forward's positions to steer."""
        if self._span is None:
            past = self._past
            if past == 0 or self._prompt_len is None:
                self._prompt_len = past + seq_len  # a new prompt (empty cache)
            n_prompt = min(seq_len, max(0, self._prompt_len - past))
            self._span = (0, n_prompt) if self.plan.positions == "prompt" else (n_prompt, seq_len)
        return self._span

    def _block_hook(self, delta: torch.Tensor):
        state = {"d": delta}
        everywhere = self.plan.positions == "all"

        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            d = state["d"]
            if d.dtype != h.dtype or d.device != h.device:
                d = state["d"] = d.to(device=h.device, dtype=h.dtype)
            gain = self.gain
            if isinstance(gain, torch.Tensor):  # one factor per batch row: (B,) -> (B, 1, ..., 1)
                if gain.numel() != h.shape[0]:
                    raise InputError(f"steering gain has {gain.numel()} values for a batch of {h.shape[0]}")
                d = d * gain.to(device=h.device, dtype=h.dtype).view(-1, *([1] * (h.dim() - 1)))
            elif gain != 1.0:
                d = d * gain
            if everywhere:
                new = h + d
            else:
                seq_len = h.shape[-2]
                lo, hi = self._positions_span(seq_len)
                if lo >= hi:
                    return None
                if lo == 0 and hi == seq_len:
                    new = h + d
                else:
                    new = h.clone()
                    new[..., lo:hi, :] += d
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new

        return hook

    # ------------------------------------------------------------ lifecycle
    def attach(self) -> "Steering":
        """Register the hooks (once)."""
        if self._handles:
            raise InputError("this steer(...) context is already active; create a new one to steer twice")
        self._prompt_len, self._span, self._past = None, None, 0
        blocks = self.plan.blocks()
        try:
            if self.plan.positions != "all":
                self._handles.append(self.plan.module.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
            for layer, delta in self.plan.cast_deltas().items():
                # prepend: every other hook on the block (the user's, transformers' output_hidden_states
                # recorder) sees the steered output, i.e. what the next block receives.
                self._handles.append(blocks[layer].register_forward_hook(self._block_hook(delta), prepend=True))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove exactly the hooks this object registered."""
        remove_hooks(self._handles)

    def __enter__(self) -> "Steering":
        return self.attach()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "inactive"
        return f"Steering(layers={list(self.plan.deltas)}, positions={self.plan.positions!r}, {state})"


def steer(
    model,
    vectors: Vectors,
    alpha: float | Sequence[float] = 1.0,
    positions: str = "all",
    *,
    model_name: str | None = None,
    block_path: str | None = None,
) -> Steering:
    """Context manager: add ``alpha * v`` to decoder-block outputs of a plain ``transformers`` model.

    Args:
        model: a ``transformers`` causal LM (or ``LoadedModel``); hooks go on
            its decoder blocks, found with ``activation_cache.arch.find_architecture``.
        vectors: one :class:`SteeringVector` or a list (their deltas are summed).
        alpha: coefficient, one for all vectors or one per vector.
        positions: ``"all"``, ``"prompt"`` or ``"generated"`` (see
            :mod:`ret_toolkit.steering.plan`).
        model_name: name used for the vector/model identity check.
        block_path: decoder-block path override.

    Returns:
        A :class:`Steering` object; the hooks are registered on ``__enter__``
        and removed on ``__exit__``, whatever happens inside.

    Raises:
        InputError: a vector for another model / d_model, an unknown layer,
            bad ``positions`` or ``alpha`` (checked before any hook is added).
    """
    return Steering(plan_steering(model, vectors, alpha, positions, model_name=model_name, block_path=block_path))
