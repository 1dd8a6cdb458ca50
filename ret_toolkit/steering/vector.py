"""Steering vectors: one direction per decoder block, saved as safetensors + a JSON manifest.

Layer convention (the same as the trajectory store's ``/hidden/<layer>``):
layer ``ℓ`` (0-based) is the residual stream at the *output of decoder block
ℓ*, i.e. ``hidden_states[ℓ + 1]`` of a ``transformers`` forward with
``output_hidden_states=True`` (except for the last block, whose
``hidden_states[-1]`` has the final norm applied in most architectures; we use
the raw block output there too). A vector at layer ℓ is added to that block's
output.

On disk a vector ``path`` is two files:

- ``path.safetensors``: one float32 tensor ``layer.<ℓ>`` of shape (d_model,)
  per layer (safetensors: nothing is unpickled);
- ``path.json``: the manifest (format, model identity, layers, d_model,
  construction, norms, toolkit version, creation time, free-form ``meta``).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from activation_cache._version import __version__
from activation_cache.arch import ArchInfo, find_architecture, resolve_model
from activation_cache.errors import InputError, other_name_hint

__all__ = ["SteeringVector", "model_identity"]

FORMAT = "ret-steering-vector"
FORMAT_VERSION = 1
_KEY = "layer."


def model_identity(model, model_name: str | None = None, block_path: str | None = None) -> dict[str, Any]:
    """The manifest fields that identify a model: name, model_type, n_layers, d_model."""
    module, name, _ = resolve_model(model)
    arch = find_architecture(module, block_path=block_path)
    config = getattr(module, "config", None)
    return {
        "model": model_name if model_name is not None else name,
        "model_type": str(getattr(config, "model_type", "") or ""),
        "n_layers": arch.n_layers,
        "d_model": arch.d_model,
    }


def _as_direction(layer, value, where: str) -> tuple[int, torch.Tensor]:
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise InputError(f"{where}: layer keys must be non-negative ints (decoder block index), got {layer!r}")
    layer = int(layer)
    if layer < 0:
        raise InputError(f"{where}: layer {layer} is negative; use the 0-based decoder block index")
    try:
        t = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: direction for layer {layer} is not numeric ({e})") from None
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise InputError(f"{where}: direction for layer {layer} has dtype {t.dtype}, expected a float tensor")
    if t.dim() != 1 or t.numel() == 0:
        raise InputError(f"{where}: direction for layer {layer} has shape {tuple(t.shape)}, expected (d_model,)")
    t = t.detach().to("cpu", torch.float32).clone()
    if not torch.isfinite(t).all():
        raise InputError(f"{where}: direction for layer {layer} has non-finite values")
    return layer, t


class SteeringVector:
    """Directions to add to the residual stream, one per decoder block.

    ``SteeringVector({12: v})`` adds ``α·v`` to the output of block 12 when
    applied with :func:`ret_toolkit.steering.steer` or
    :func:`ret_toolkit.steering.nnsight_generate`. All directions share one
    ``d_model`` and are stored as float32 on the CPU.

    Args:
        directions: mapping ``layer index -> (d_model,)`` tensor / array; layers
            are 0-based decoder-block indices (see module docstring).
        model: name of the model the vector was built for (``""`` = unknown:
            the name is then not checked when applying it).
        model_type, n_layers: further identity fields, checked when known.
        construction: how it was built, e.g. ``{"method": "contrast", ...}``.
        norms: per-layer norm information (keys are layer strings).
        meta: free-form JSON-serialisable user fields.
    """

    def __init__(
        self,
        directions: Mapping[int, Any],
        *,
        model: str = "",
        model_type: str = "",
        n_layers: int | None = None,
        construction: Mapping[str, Any] | None = None,
        norms: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        created: str | None = None,
    ):
        if not isinstance(directions, Mapping) or not directions:
            raise InputError("SteeringVector needs a non-empty mapping layer index -> direction tensor")
        pairs = [_as_direction(k, v, "SteeringVector") for k, v in directions.items()]
        dims = {int(t.numel()) for _, t in pairs}
        if len(dims) != 1:
            raise InputError(f"SteeringVector: directions have different lengths {sorted(dims)}; all must be d_model")
        if len({k for k, _ in pairs}) != len(pairs):
            raise InputError("SteeringVector: the same layer is given twice")
        self.directions: dict[int, torch.Tensor] = dict(sorted(pairs))
        self.d_model: int = dims.pop()
        self.model = str(model or "")
        self.model_type = str(model_type or "")
        self.n_layers = None if n_layers is None else int(n_layers)
        if self.n_layers is not None and max(self.directions) >= self.n_layers:
            raise InputError(f"SteeringVector: layer {max(self.directions)} is out of range for a {self.n_layers}-layer model")
        self.construction = dict(construction or {"method": "manual"})
        self.norms = {str(k): v for k, v in (norms or {}).items()}
        for layer, t in self.directions.items():
            self.norms.setdefault(str(layer), {})
            if isinstance(self.norms[str(layer)], dict):
                self.norms[str(layer)]["norm"] = float(t.norm())
        self.meta = dict(meta or {})
        self.created = created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.source = ""  # the file it was loaded from, for error messages

    # ------------------------------------------------------------ accessors
    @property
    def layers(self) -> list[int]:
        """Layer indices, ascending."""
        return list(self.directions)

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.directions[layer]

    def __len__(self) -> int:
        return len(self.directions)

    def __repr__(self) -> str:
        name = f"model={self.model!r}, " if self.model else ""
        method = self.construction.get("method", "?")
        return f"SteeringVector({name}layers={self.layers}, d_model={self.d_model}, construction={method!r})"

    @property
    def manifest(self) -> dict[str, Any]:
        """The JSON manifest written next to the tensors."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "toolkit_version": __version__,
            "model": self.model,
            "model_type": self.model_type,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "layers": self.layers,
            "layer_convention": "output of decoder block <layer> (0-based), as /hidden/<layer> in the trajectory store",
            "dtype": "float32",
            "construction": self.construction,
            "norms": self.norms,
            "created": self.created,
            "meta": self.meta,
        }

    # ------------------------------------------------------------ save / load
    @staticmethod
    def paths(path: str | Path) -> tuple[Path, Path]:
        """``(tensors, manifest)`` file paths for ``path`` (a ``.safetensors``/``.json`` suffix is dropped)."""
        path = Path(path)
        if path.suffix in (".safetensors", ".json"):
            path = path.with_suffix("")
        return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")

    def save(self, path: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
        """Write ``path.safetensors`` and ``path.json``; returns both paths.

        Both files are written under temporary names and renamed into place
        when both are complete. An existing vector with the same content (its
        tensors and manifest but for ``created`` / ``toolkit_version``) is left
        as it is; any other existing file at either path is refused before
        anything is written, unless ``overwrite``.

        Raises:
            InputError: a missing directory, a manifest that is not JSON, or
                (without ``overwrite``) existing files that are not this vector.
        """
        from safetensors.torch import save_file

        from activation_cache.outputs import atomic_path

        tensors_path, manifest_path = self.paths(path)
        if not tensors_path.parent.is_dir():
            raise InputError(f"output directory does not exist: {tensors_path.parent}")
        try:
            manifest_text = json.dumps(self.manifest, indent=2, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise InputError(f"steering vector manifest is not JSON-serialisable ({e}); check meta / construction") from None
        if not overwrite and self._saved_at(tensors_path, manifest_path):
            return tensors_path, manifest_path
        tensors = {f"{_KEY}{layer}": t.contiguous() for layer, t in self.directions.items()}
        # the manifest is renamed last: a reader that finds it finds its tensors
        with atomic_path(manifest_path) as tmp_manifest, atomic_path(tensors_path) as tmp_tensors:
            save_file(tensors, str(tmp_tensors), metadata={"format": FORMAT, "manifest": manifest_path.name})
            tmp_manifest.write_text(manifest_text + "\n")
        return tensors_path, manifest_path

    #: Manifest fields that differ between two saves of the same vector.
    _VOLATILE = ("created", "toolkit_version")

    def _saved_at(self, tensors_path: Path, manifest_path: Path) -> bool:
        """True if both files already hold this vector; False if neither exists.

        Raises InputError (one line) if either exists with other content.
        """
        from activation_cache.errors import option
        from activation_cache.outputs import differing_keys

        present = [p for p in (tensors_path, manifest_path) if p.exists()]
        if not present:
            return False
        how = f"pass {option('overwrite', True)} to replace it, or choose another path"
        if len(present) == 1:
            raise InputError(f"{present[0]} exists and is not part of a saved steering vector; {how}")
        try:
            other = SteeringVector.load(tensors_path)
        except InputError:
            raise InputError(f"{tensors_path} exists and is not a readable steering vector; {how}") from None
        mine = json.loads(json.dumps(self.manifest))
        theirs = json.loads(json.dumps(other.manifest))
        keys = differing_keys(mine, theirs, ignore=self._VOLATILE)
        if other.layers != self.layers or any(not torch.equal(other[x], self[x]) for x in self.layers):
            keys = sorted({"directions", *keys})
        if keys:
            raise InputError(f"{tensors_path} holds another steering vector (differs in {', '.join(keys)}); {how}")
        return True

    @classmethod
    def load(cls, path: str | Path, model=None, *, model_name: str | None = None) -> "SteeringVector":
        """Read a vector written by :meth:`save`; with ``model``, also :meth:`check_model` it.

        Raises:
            InputError: missing files, not a steering-vector manifest, a newer
                format, tensors that do not match the manifest, or (with
                ``model``) a vector for another model.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        tensors_path, manifest_path = cls.paths(path)
        for p in (tensors_path, manifest_path):
            if not p.is_file():
                raise InputError(f"steering vector file not found: {p}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{manifest_path}: not valid JSON ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise InputError(f"{manifest_path}: not a steering-vector manifest (format != {FORMAT!r})")
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise InputError(f"{manifest_path}: format_version {version!r} is not supported (this toolkit reads <= {FORMAT_VERSION})")
        try:
            tensors = load_file(str(tensors_path))
        except (SafetensorError, OSError, ValueError) as e:
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise InputError(f"{tensors_path}: not a readable safetensors file ({first})") from None
        layers = manifest.get("layers")
        if not isinstance(layers, list) or not all(isinstance(x, int) for x in layers):
            raise InputError(f"{manifest_path}: 'layers' must be a list of ints")
        want = {f"{_KEY}{x}" for x in layers}
        if set(tensors) != want:
            raise InputError(f"{tensors_path}: tensors {sorted(tensors)} do not match manifest layers {layers}")
        d_model = manifest.get("d_model")
        for key, t in tensors.items():
            if tuple(t.shape) != (d_model,):
                raise InputError(f"{tensors_path}: {key} has shape {tuple(t.shape)}, manifest says d_model {d_model}")
        where = str(tensors_path)
        directions = dict(_as_direction(int(k[len(_KEY):]), t, where) for k, t in tensors.items())
        vec = cls(
            directions,
            model=manifest.get("model") or "",
            model_type=manifest.get("model_type") or "",
            n_layers=manifest.get("n_layers"),
            construction=manifest.get("construction"),
            norms=manifest.get("norms"),
            meta=manifest.get("meta"),
            created=manifest.get("created"),
        )
        vec.source = str(tensors_path)
        if model is not None:
            vec.check_model(model, model_name=model_name)
        return vec

    # ------------------------------------------------------------ model check
    def check_name(self, name: str | None) -> None:
        """InputError if the vector was built for another model than ``name`` (checkable before a load)."""
        if self.model and name and self.model != name:
            raise InputError(f"steering vector {self.source or repr(self)} was built for model {self.model!r} "
                             f"but this model is {name!r} ({other_name_hint(self.model)})")

    def check_model(self, model, *, model_name: str | None = None, block_path: str | None = None) -> ArchInfo:
        """Check that this vector fits ``model``; returns the model's :class:`ArchInfo`.

        Checked: ``d_model``; every layer exists; and, when the vector records
        them, the model name, ``model_type`` and number of layers. The model's
        name is ``model_name`` if given, else ``LoadedModel.name`` /
        ``model.name_or_path`` (pass ``model_name=`` when the same model was
        loaded under another name or path).

        Raises:
            InputError: one line naming the vector, the field and both values.
        """
        module, name, _ = resolve_model(model)
        if model_name is not None:
            name = model_name
        arch = find_architecture(module, block_path=block_path)
        config = getattr(module, "config", None)
        model_type = str(getattr(config, "model_type", "") or "")
        what = f"steering vector {self.source or repr(self)}"
        this = f"this model ({name or type(module).__name__})"
        if self.d_model != arch.d_model:
            raise InputError(f"{what} has d_model {self.d_model} but {this} has d_model {arch.d_model}")
        self.check_name(name)
        if self.model_type and model_type and self.model_type != model_type:
            raise InputError(f"{what} was built for a {self.model_type!r} model but {this} is {model_type!r}")
        if self.n_layers is not None and self.n_layers != arch.n_layers:
            raise InputError(f"{what} was built for a {self.n_layers}-layer model but {this} has {arch.n_layers} layers")
        bad = [x for x in self.layers if x >= arch.n_layers]
        if bad:
            raise InputError(f"{what} targets layer(s) {bad} but {this} has decoder blocks 0..{arch.n_layers - 1}")
        return arch

    # ------------------------------------------------------------ arithmetic
    def random_like(self, seed: int = 0) -> "SteeringVector":
        """A control: at every layer a random (Gaussian) direction with this direction's norm.

        Steering with it at the same α asks whether the effect of this vector is its
        direction's or that of any push of the same size at the same layer.
        """
        gen = torch.Generator().manual_seed(int(seed))
        directions = {}
        for layer, v in self.directions.items():
            r = torch.randn(v.numel(), generator=gen)
            directions[layer] = r * (v.norm() / r.norm())
        return SteeringVector(
            directions, model=self.model, model_type=self.model_type, n_layers=self.n_layers,
            construction={"method": "random_control", "seed": int(seed), "control_of": dict(self.construction)},
            meta=self.meta,
        )

    def scaled(self, factor: float) -> "SteeringVector":
        """A copy with every direction multiplied by ``factor`` (manifest fields kept)."""
        if not math.isfinite(float(factor)):
            raise InputError(f"scale factor must be finite, got {factor}")
        return SteeringVector(
            {k: v * float(factor) for k, v in self.directions.items()},
            model=self.model, model_type=self.model_type, n_layers=self.n_layers,
            construction={**self.construction, "scaled_by": float(factor) * self.construction.get("scaled_by", 1.0)},
            norms={k: dict(v) if isinstance(v, dict) else v for k, v in self.norms.items()}, meta=self.meta,
        )
