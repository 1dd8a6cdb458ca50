"""Closed-loop steering: detect the current macrostate with the RET encoder, then steer.

::

    from ret_toolkit.steering import ClosedLoop, load_reader

    reader = load_reader("demo_out/ret_macro.ckpt", loaded)          # RET encoder + centroids
    with ClosedLoop(model, vec, reader, groups=[3], alpha=0.5, when="out") as loop:
        out = model.generate(**inputs, max_new_tokens=40)            # any generate / pipeline
    loop.steered        # (B, steps) bool: which forward passes were steered, per sequence
    loop.groups         # (B, steps) int: the macrostate detected at the end of each forward

Per decoding step (one forward pass of the model):

1. the steering hooks of :func:`ret_toolkit.steering.steer` add
   ``gain[b] * alpha * v`` (``gain`` is that context's ``.gain`` knob, a (B,)
   0/1 tensor here: no second steering mechanism);
2. read-only hooks (:class:`~ret_toolkit.steering.detect.LayerCapture`) keep
   the RET layers' outputs; after the forward, the newest token of each
   sequence is appended to a rolling window of the last ``w`` tokens and the
   RET encoder assigns its group;
3. ``gain[b]`` for the *next* forward is 1 where the group is in ``groups``
   (``when="in"``: steer while in those macrostates) or not in them
   (``when="out"``: steer until the sequence reaches them).

So steering lags detection by one token: the state of token t is only known
after token t's forward, and it decides whether token t+1's forward is steered
(detect, then steer). The prompt forward is never steered (nothing has been
detected yet); its last token's group decides the first generated token.
When the steered layer is at or below a RET layer, the detector sees the
steered residual stream (what the model itself computes next); ``when="out"``
then behaves like a thermostat, ``when="in"`` can lock in.

The rolling windows start from the prompt's real tokens (the attention mask
drops left padding) with the first token repeated when the prompt is shorter
than ``w``, exactly as ``RETModule.encode_sequence`` does for a store, so a
group detected here is the group the same hidden states get offline.

A new ``generate`` call (empty KV cache) resets the loop; :attr:`groups` and
:attr:`steered` describe the latest call. Works with KV-cache ``generate``
(each later forward adds one token); with ``use_cache=False`` every forward
looks like a new prompt, which this refuses. Greedy decoding and sampling
only: beam search reorders sequences between steps, and the rolling windows
would not follow.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from activation_cache.devices import input_device
from activation_cache.errors import InputError
from ret_toolkit.steering.detect import LayerCapture, MacrostateReader
from ret_toolkit.steering.hooks import cache_length, remove_hooks, steer
from ret_toolkit.steering.plan import Vectors

__all__ = ["ClosedLoop", "closed_loop_generate"]

WHEN = ("in", "out")


class ClosedLoop:
    """Steer each sequence only while its detected macrostate is (``"in"``) or is not (``"out"``) in ``groups``.

    Args:
        model: a ``transformers`` causal LM or ``LoadedModel`` (plain hooks;
            the nnsight path has no per-step controller).
        vectors, alpha: as for :func:`ret_toolkit.steering.steer` (applied at
            all positions of the forwards that are switched on).
        reader: :class:`MacrostateReader` (``load_reader(ckpt, model)``).
        groups: group ids that trigger (``when="in"``) or stop (``"out"``) steering.
        when: ``"in"`` or ``"out"``.
        model_name: the model's name for the vector / RET identity checks.

    Attributes (after a ``generate`` inside the block; module docstring):
        groups: int64 (B, steps), group of the newest token after each forward
            (column 0: the last prompt token; column j >= 1: generated token j-1).
        steered: bool (B, steps), whether that forward was steered.
    """

    def __init__(self, model, vectors: Vectors, reader: MacrostateReader, groups: Iterable[int],
                 alpha: float | Sequence[float] = 1.0, when: str = "in", *, model_name: str | None = None,
                 block_path: str | None = None):
        if when not in WHEN:
            raise InputError(f"when must be 'in' (steer while in the groups) or 'out' (steer while outside); got {when!r}")
        if not isinstance(reader, MacrostateReader):
            raise InputError(f"reader must be a MacrostateReader (load_reader(ckpt)), got {type(reader).__name__}")
        reader.check_model(model, model_name=model_name)
        self.reader = reader
        self.trigger = torch.tensor(reader.check_groups(list(groups)))
        self.when = when
        self.steering = steer(model, vectors, alpha, positions="all", model_name=model_name, block_path=block_path)
        self.capture = LayerCapture(model, reader.layers)
        self._module = self.steering.plan.module
        self._handles: list = []
        self._reset()

    def _reset(self) -> None:
        self._windows: torch.Tensor | None = None  # (B, w, D_in) rolling hidden-state windows
        self._mask: torch.Tensor | None = None
        self._gain_now: torch.Tensor | None = None
        self._groups: list[torch.Tensor] = []
        self._steered: list[torch.Tensor] = []
        self.steering.gain = 0.0  # the prompt forward: nothing detected yet

    # ------------------------------------------------------------ results
    @property
    def groups(self) -> torch.Tensor:
        """int64 (B, steps): detected group after each forward of the latest generate call."""
        return torch.stack(self._groups, 1) if self._groups else torch.zeros(0, 0, dtype=torch.long)

    @property
    def steered(self) -> torch.Tensor:
        """bool (B, steps): whether each forward of the latest generate call was steered."""
        return torch.stack(self._steered, 1) if self._steered else torch.zeros(0, 0, dtype=torch.bool)

    # ------------------------------------------------------------ hooks
    def _pre_forward(self, module, args, kwargs):
        past = cache_length(kwargs)
        if kwargs.get("use_cache") is False:
            raise InputError("closed-loop steering needs generate with the KV cache (use_cache=True): "
                             "without it every forward re-reads the whole sequence")
        if not past:  # empty cache: a new prompt
            self._reset()
            self._mask = kwargs.get("attention_mask")
        gain = self.steering.gain
        self._gain_now = gain.bool() if isinstance(gain, torch.Tensor) else None

    def _prompt_windows(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T, D) prompt states -> (B, w, D): the last w real tokens, first token repeated if fewer."""
        w = self.reader.window
        mask = self._mask
        rows = []
        for b in range(h.shape[0]):
            real = h[b] if mask is None else h[b][mask[b, -h.shape[1]:].bool()]
            if real.shape[0] == 0:
                raise InputError(f"prompt {b} has no tokens (attention mask all zero)")
            if real.shape[0] < w:  # as RETModule.encode_sequence: the sequence "started long ago" in h_0
                real = torch.cat([real[:1].expand(w - real.shape[0], -1), real])
            rows.append(real[-w:])
        return torch.stack(rows)

    def _post_forward(self, module, args, kwargs, output):
        h = self.capture.hidden()  # (B, T, D_in): T = prompt length, then 1 per step
        if self._windows is None:
            self._windows = self._prompt_windows(h)
        else:
            self._windows = torch.cat([self._windows, h], dim=1)[:, -self.reader.window:]
        group = self.reader.window_groups(self._windows).cpu()
        inside = torch.isin(group, self.trigger)
        on = inside if self.when == "in" else ~inside
        steered = self._gain_now if self._gain_now is not None else torch.zeros_like(on)
        self._groups.append(group)
        self._steered.append(steered.cpu())
        self.steering.gain = on.float()  # read by the steering hooks in the next forward
        return None

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "ClosedLoop":
        self._reset()
        try:
            self.steering.attach()
            self.capture.__enter__()
            self._handles.append(self._module.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
            self._handles.append(self._module.register_forward_hook(self._post_forward, with_kwargs=True))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        remove_hooks(self._handles)
        self.capture.__exit__(None, None, None)
        self.steering.remove()

    def __repr__(self) -> str:
        return (f"ClosedLoop(groups={self.trigger.tolist()}, when={self.when!r}, "
                f"layers={list(self.steering.plan.deltas)}, detector layers={self.reader.layers})")


def closed_loop_generate(model, inputs, vectors: Vectors, reader: MacrostateReader, groups: Iterable[int],
                         alpha: float | Sequence[float] = 1.0, when: str = "in", *, tokenizer=None,
                         model_name: str | None = None, **generate_kwargs: Any) -> tuple[torch.Tensor, ClosedLoop]:
    """``model.generate`` inside a :class:`ClosedLoop`; greedy unless ``do_sample=True`` is passed.

    Args:
        inputs: a prompt string, a list of them (left-padded), an id tensor or
            a dict with ``input_ids`` (and ``attention_mask``).
        tokenizer: needed for string prompts unless ``model`` is a ``LoadedModel``.
        **generate_kwargs: e.g. ``max_new_tokens``.

    Returns:
        ``(sequences, loop)``: int64 (B, T + new) ids and the loop, whose
        ``groups`` / ``steered`` describe every decoding step.
    """
    from activation_cache.arch import resolve_model
    from ret_toolkit.steering.nnsight_steer import encode_inputs, generate_settings

    module, _, tok = resolve_model(model)
    tokenizer = tokenizer if tokenizer is not None else tok
    if tokenizer is None and (isinstance(inputs, str) or isinstance(inputs, (list, tuple))):
        raise InputError("string prompts need tokenizer= (or a LoadedModel)")
    encoded = encode_inputs(inputs, tokenizer)
    device = input_device(module)
    kwargs = generate_settings(generate_kwargs, tokenizer)
    with torch.inference_mode(), ClosedLoop(model, vectors, reader, groups, alpha, when, model_name=model_name) as loop:
        sequences = module.generate(**{k: v.to(device) for k, v in encoded.items()}, **kwargs)
    return sequences, loop
