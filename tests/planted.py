"""Planted processes whose truth is known, shared by the module and known-answer tests."""

from __future__ import annotations

import torch


def slow_latent_sequences(n_seq=64, T=200, n_states=4, p_switch=0.05, noise=3.0, seed=0, D=32):
    """h_t = A[s_t] + low-rank fast noise + white noise, s_t a slowly switching discrete state.

    Returns hidden states (n_seq, T, D) and states (n_seq, T). With noise=3 a
    single token says little about s_t; a window says a lot. ``p_switch=1``
    redraws the state at every token: no slow phase at all.
    """
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n_states, D, generator=g)
    fast = torch.randn(D, 8, generator=g)
    switch = torch.rand(n_seq, T, generator=g) < p_switch
    proposals = torch.randint(n_states, (n_seq, T), generator=g)
    s = torch.empty(n_seq, T, dtype=torch.long)
    s[:, 0] = proposals[:, 0]
    for t in range(1, T):
        s[:, t] = torch.where(switch[:, t], proposals[:, t], s[:, t - 1])
    h = A[s] + noise * torch.randn(n_seq, T, D, generator=g) + 0.5 * torch.randn(n_seq, T, 8, generator=g) @ fast.T
    return h, s


def train_small_ret(h_train: torch.Tensor, epochs: int = 6, seed: int = 0, **config):
    """A small RETModule fitted on (S, T, D) sequences with Lightning on the CPU (windows never cross sequences)."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from activation_cache.quiet import quiet_training
    from ret_toolkit.macro import RETModule

    L.seed_everything(seed, verbose=False)
    D = h_train.shape[-1]
    config = {"window": 8, "max_horizon": 4, "hidden": 64, "predictor_hidden": 64, "lr": 1e-3, **config}
    m = RETModule(d_input=D, **config)
    flat = h_train.reshape(-1, D)
    m.set_standardization(flat.mean(0), flat.std(0))
    length = config["window"] + config["max_horizon"]
    wins = torch.cat([h_train[:, i : i + length] for i in range(0, h_train.shape[1] - length + 1, 4)])
    with quiet_training():
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            max_epochs=epochs)
        trainer.fit(m, DataLoader(TensorDataset(wins), batch_size=64, shuffle=True))
    return m.eval()
