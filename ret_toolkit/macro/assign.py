"""Encode a trajectory store with a trained RET model, fit and assign macrostates.

The z vectors and group ids go to a separate HDF5 file (``format =
"ret-macrostates"``), written sequence by sequence, so stores larger than
memory are fine::

    /z        float32 (N, d)   z_t of every token (row-aligned with the store)
    /group    int32   (N,)     macrostate (nearest k-means centroid)
    /offsets  int64   (S+1,)   copied from the store
    /centroids float32 (K, d)   k-means centroids of the L2-normalised z
    attrs: format, store, checkpoint, model, layers, k, z_dim
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch
from sklearn.cluster import KMeans
from tqdm.auto import tqdm

from activation_cache.errors import InputError
from activation_cache.reader import TrajectoryStore
from activation_cache.schema import open_h5
from ret_toolkit.checkpoint import load_checkpoint
from ret_toolkit.macro.module import RETModule

MACRO_FORMAT = "ret-macrostates"


def load_ret(ckpt: str | Path) -> RETModule:
    """Load a RET checkpoint (``weights_only=True``: nothing is unpickled) in eval mode."""
    return load_checkpoint(RETModule, ckpt, "RET")


def source_layers(module: RETModule) -> list[str]:
    """Store layer names the RET checkpoint reads (``source_layers``), in order; [] if not recorded."""
    return list(module.hparams.source_layers or ())


def require_centroids(module: RETModule, where: str | Path = "") -> None:
    """InputError unless the checkpoint carries macrostate centroids (``ret_macro.ckpt``)."""
    if module.centroids is None:
        prefix = f"{where}: " if str(where) else ""
        raise InputError(f"{prefix}RET checkpoint has no macrostate centroids; use the ret_macro.ckpt written by "
                         "ret-macro or ret-demo")


def check_store(module: RETModule, store: TrajectoryStore) -> list[str]:
    """The store layers the model reads; InputError if the store does not fit the checkpoint."""
    hp = module.hparams
    layers = source_layers(module)
    if hp.source_model and store.model != hp.source_model:
        raise InputError(f"{store.path}: store is from model {store.model!r} but the RET checkpoint was trained on {hp.source_model!r}")
    if not layers:
        raise InputError("RET checkpoint does not record its layers (source_layers); retrain with ret-train macro")
    missing = [x for x in layers if x not in store.layers]
    if missing:
        raise InputError(f"{store.path}: store lacks layer(s) {missing} that the RET checkpoint reads")
    if store.d_model * len(layers) != hp.d_input:
        raise InputError(f"{store.path}: store has d_model {store.d_model} x {len(layers)} layers, checkpoint expects {hp.d_input}")
    if store.n_sequences == 0:
        raise InputError(f"{store.path}: store has no committed sequences")
    return layers


def sequence_hidden(store: TrajectoryStore, s: int, layers: Sequence[str]) -> np.ndarray:
    """Hidden states of sequence ``s`` with ``layers`` concatenated: (T, D * len(layers))."""
    parts = [store.hidden(s, x) for x in layers]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


@torch.no_grad()
def encode_store(module: RETModule, store_path: str | Path, out_path: str | Path, progress: bool = True) -> Path:
    """Write z for every token of a store into a new macrostate file (streaming)."""
    out_path = Path(out_path)
    if not out_path.resolve().parent.is_dir():
        raise InputError(f"output directory does not exist: {out_path.resolve().parent}")
    with TrajectoryStore(store_path) as store:
        layers = check_store(module, store)
        tmp = out_path.with_name(out_path.name + ".tmp")
        with h5py.File(tmp, "w") as f:
            d = module.hparams.z_dim
            z_ds = f.create_dataset("z", (store.n_tokens, d), np.float32, chunks=(min(8192, max(store.n_tokens, 1)), d))
            f.create_dataset("offsets", data=store.offsets)
            f.attrs.update(format=MACRO_FORMAT, store=str(Path(store_path).resolve()), model=store.model,
                           layers=",".join(layers), z_dim=d)
            for s in tqdm(range(store.n_sequences), desc="encode z", unit="seq", disable=not progress):
                h = torch.from_numpy(sequence_hidden(store, s, layers))
                if not torch.isfinite(h).all():
                    raise InputError(f"{store_path}: non-finite hidden states in sequence {s}")
                z_ds[store.offsets[s] : store.offsets[s + 1]] = module.encode_sequence(h).numpy()
        tmp.replace(out_path)
    return out_path


def open_macro(path: str | Path, mode: str = "r") -> h5py.File:
    """Open a macrostate file, checking its format."""
    f = open_h5(path, mode) if mode == "r" else h5py.File(path, mode)
    if f.attrs.get("format") != MACRO_FORMAT:
        f.close()
        raise InputError(f"{path}: not a ret-macrostates file")
    return f


def rows_of(offsets: np.ndarray, sequences: Sequence[int]) -> np.ndarray:
    """Token row indices of ``sequences``, sorted int64."""
    parts = [np.arange(offsets[s], offsets[s + 1]) for s in sorted(sequences)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def l2_normalize(z: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, (N, d) -> (N, d) float32 (zero rows stay zero)."""
    z = np.asarray(z, dtype=np.float32)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(norm > 0, norm, 1.0)


def fit_centroids(z: np.ndarray, k: int, seed: int = 0, max_rows: int = 50_000) -> np.ndarray:
    """k-means (scikit-learn) centroids of the L2-normalised z, (K, d) float32; fits on at most ``max_rows`` rows.

    Normalised because RET's loss is a cosine: the length of z carries no
    meaning the encoder was trained for (:meth:`RETModule.assign` normalises too).
    """
    if len(z) < k:
        raise InputError(f"only {len(z)} training tokens for k={k} macrostates")
    if len(z) > max_rows:
        z = z[np.random.default_rng(seed).choice(len(z), max_rows, replace=False)]
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(l2_normalize(z))
    return km.cluster_centers_.astype(np.float32)


def assign_groups(macro_path: str | Path, module: RETModule, batch: int = 65536) -> None:
    """Nearest-centroid group of every token, written to ``/group`` of the macro file."""
    if module.centroids is None:
        raise InputError("RET model has no centroids; fit macrostates first")
    with open_macro(macro_path, "a") as f:
        z = f["z"]
        if "group" in f:
            del f["group"]
        g = f.create_dataset("group", (z.shape[0],), np.int32, chunks=(min(65536, max(z.shape[0], 1)),))
        for lo in range(0, z.shape[0], batch):
            g[lo : lo + batch] = module.assign(torch.from_numpy(z[lo : lo + batch])).numpy().astype(np.int32)
        if "centroids" in f:
            del f["centroids"]
        f.create_dataset("centroids", data=module.centroids.numpy())
        f.attrs["k"] = int(module.centroids.shape[0])


def save_with_centroids(module: RETModule, ckpt_in: str | Path | dict, ckpt_out: str | Path,
                        centroids: np.ndarray) -> Path:
    """Copy a checkpoint (a path, or its dict already read), adding the macrostate centroids (loaded back
    by ``on_load_checkpoint``)."""
    state = dict(ckpt_in) if isinstance(ckpt_in, dict) else torch.load(ckpt_in, map_location="cpu", weights_only=True)
    state["macrostates"] = {"centroids": torch.as_tensor(centroids), "metric": "cosine"}
    torch.save(state, ckpt_out)
    module.centroids, module.centroid_metric = torch.as_tensor(centroids), "cosine"
    return Path(ckpt_out)
