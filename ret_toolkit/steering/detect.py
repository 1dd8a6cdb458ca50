"""Read a live model's macrostate with a RET checkpoint: capture block outputs, encode, assign groups.

A RET checkpoint with centroids (``ret_macro.ckpt`` from ``ret-macro`` /
``ret-demo``) records the layers it reads (``source_layers``, decoder-block
indices as in the store) and the model its store came from. :class:`MacrostateReader`
checks both against a model, and turns hidden states of those layers into one
group per token exactly as :func:`ret_toolkit.macro.assign.encode_store` +
``assign_groups`` do for a store (same window, same left padding of the first
``w - 1`` tokens), so a group seen here means what it means in the demo report.

:class:`LayerCapture` is the read-only side: forward hooks that keep the latest
output of the RET layers. Registered after :func:`ret_toolkit.steering.steer`'s
hooks (which are prepended), it sees the *steered* residual stream, i.e. what
the next block receives.
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Sequence

import torch

from activation_cache.arch import find_architecture, get_module, resolve_model
from activation_cache.errors import InputError, other_name_hint
from ret_toolkit.steering.hooks import remove_hooks

__all__ = ["LayerCapture", "MacrostateReader", "load_reader"]


class MacrostateReader:
    """A RET encoder with k-means centroids, reading hidden states of ``layers``.

    Args:
        module: a :class:`ret_toolkit.macro.RETModule` with ``centroids`` (K, d).

    Attributes:
        layers: decoder-block indices it reads (concatenated in this order).
        window: w, tokens per encoder window.
        k: number of macrostates.
        source_model: the model name its store was extracted from ("" unknown).
    """

    def __init__(self, module):
        from ret_toolkit.macro.assign import require_centroids, source_layers

        require_centroids(module)
        hp = module.hparams
        names = source_layers(module)
        if not names or not all(x.isdigit() for x in names):
            raise InputError(f"RET checkpoint reads layers {names or '(none recorded)'}; closed-loop steering needs "
                             "decoder-block layers (not 'embed')")
        self.module = module.eval()
        self.layers: list[int] = [int(x) for x in names]
        self.window: int = int(hp.window)
        self.k: int = int(module.centroids.shape[0])
        self.source_model: str = str(hp.source_model or "")

    def __repr__(self) -> str:
        return f"MacrostateReader(layers={self.layers}, window={self.window}, k={self.k}, model={self.source_model!r})"

    def check_groups(self, groups: Sequence[int], what: str = "group") -> list[int]:
        """``groups`` as a sorted list of ints; InputError for ids outside 0..K-1."""
        out = []
        for g in groups:
            try:
                if isinstance(g, bool):
                    raise TypeError
                g = operator.index(g)  # ints and numpy integers, not floats or strings
            except TypeError:
                raise InputError(f"{what} {g!r} is not an integer group id") from None
            if not 0 <= g < self.k:
                raise InputError(f"{what} {g} does not exist: the RET checkpoint has groups 0..{self.k - 1}")
            out.append(g)
        if not out:
            raise InputError(f"no {what} given")
        return sorted(set(out))

    def check_name(self, name: str | None) -> None:
        """InputError if the encoder was trained on another model than ``name`` (checkable before a load)."""
        if self.source_model and name and name != self.source_model:
            raise InputError(f"the RET checkpoint was trained on hidden states of {self.source_model!r}, "
                             f"not {name!r} ({other_name_hint(self.source_model)})")

    def check_model(self, model, model_name: str | None = None) -> None:
        """InputError unless ``model`` has the layers and width the encoder reads (and, if known, the name)."""
        module, name, _ = resolve_model(model)
        self.check_name(model_name if model_name is not None else name)
        arch = find_architecture(module)
        bad = [x for x in self.layers if x >= arch.n_layers]
        if bad:
            raise InputError(f"the RET checkpoint reads layer(s) {bad} but the model has decoder blocks "
                             f"0..{arch.n_layers - 1}")
        d_input = int(self.module.hparams.d_input)
        if arch.d_model * len(self.layers) != d_input:
            raise InputError(f"the RET checkpoint expects d_input {d_input} but the model gives d_model "
                             f"{arch.d_model} x {len(self.layers)} layer(s) = {arch.d_model * len(self.layers)}")

    @torch.no_grad()
    def groups(self, hidden: torch.Tensor) -> torch.Tensor:
        """Group of every token of one sequence: (T, D_in) hidden states -> int64 (T,).

        Token t's group depends on tokens t-w+1..t only (causal); the first
        w-1 tokens see the first row repeated, as in ``encode_sequence``.
        """
        return self.module.assign(self.module.encode_sequence(hidden.float()))

    @torch.no_grad()
    def window_groups(self, windows: torch.Tensor) -> torch.Tensor:
        """Group of the last token of each window: (B, w, D_in) -> int64 (B,)."""
        device = next(self.module.parameters()).device  # the reader may run elsewhere than the model's blocks
        z = self.module.encode(windows.to(device=device, dtype=torch.float32))[:, -1]  # (B, d): one full window each
        return self.module.assign(z)


def load_reader(ckpt: str | Path, model=None, *, model_name: str | None = None) -> MacrostateReader:
    """Load a RET checkpoint with centroids (``weights_only=True``) and, with ``model``, check it fits."""
    from ret_toolkit.macro.assign import load_ret

    reader = MacrostateReader(load_ret(ckpt))
    if model is not None:
        reader.check_model(model, model_name=model_name)
    return reader


class LayerCapture:
    """Forward hooks keeping the latest outputs of some decoder blocks; a context manager.

    ``hidden()`` returns them concatenated along the feature axis in ``layers``
    order: (B, T, D * len(layers)) float32, detached unless ``detach=False``
    (a training loss on the activations, :mod:`ret_toolkit.blocking`). Only the
    handles added here are removed on exit (also on exceptions).
    """

    def __init__(self, model, layers: Sequence[int], detach: bool = True):
        module, _, _ = resolve_model(model)
        self._blocks = get_module(module, find_architecture(module).block_path)
        self.layers = list(layers)
        self.detach = detach
        self._out: dict[int, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, layer: int):
        def hook(mod, args, output):
            h = output[0] if isinstance(output, tuple) else output
            self._out[layer] = h.detach() if self.detach else h
        return hook

    def hidden(self) -> torch.Tensor:
        """(B, T, D * len(layers)) outputs of the last forward pass."""
        missing = [x for x in self.layers if x not in self._out]
        if missing:
            raise RuntimeError(f"no forward pass has reached layer(s) {missing} yet")
        # With a device map the blocks (and so their outputs) may sit on different GPUs.
        device = self._out[self.layers[0]].device
        parts = [self._out[x].to(device=device, dtype=torch.float32) for x in self.layers]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def clear(self) -> None:
        self._out.clear()

    def __enter__(self) -> "LayerCapture":
        try:
            for layer in self.layers:
                self._handles.append(self._blocks[layer].register_forward_hook(self._hook(layer)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        remove_hooks(self._handles)
        self._out.clear()
