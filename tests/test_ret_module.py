"""RET encoder LightningModule: encoder, EMA target, loss, effective rank, collapse guard, checkpoints."""

from __future__ import annotations

import inspect
import re

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ret_toolkit.macro import RETModule, effective_rank
from ret_toolkit.macro.module import cosine_momentum

from planted import slow_latent_sequences

D = 32
W, K = 8, 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trainer(**kw) -> L.Trainer:
    base = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**base, **kw})


def windows(h: torch.Tensor, length: int = W + K, stride: int = 4) -> torch.Tensor:
    """(S, T, D) -> (N, length, D) windows that never cross sequences."""
    return torch.cat([h[:, i : i + length] for i in range(0, h.shape[1] - length + 1, stride)])


class DictWindows(Dataset):
    """Yields {"x": (L, D) float16, "seq": int} like the HDF5 window dataset."""

    def __init__(self, x: torch.Tensor):
        self.x = x.half()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "seq": i}


class EpochMetrics(L.Callback):
    def __init__(self):
        self.history: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, module):
        self.history.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def small_module(**kw) -> RETModule:
    return RETModule(d_input=D, window=W, max_horizon=K, hidden=64, predictor_hidden=64, **kw)


# ---- effective rank ----


def test_effective_rank_isotropic_and_rank_one():
    torch.manual_seed(0)
    d = 16
    assert effective_rank(torch.randn(8192, d)) == pytest.approx(d, rel=0.03)
    rank1 = torch.randn(4096, 1) * torch.randn(1, d)
    assert effective_rank(rank1) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.ones(100, d)) == pytest.approx(1.0, abs=1e-3)  # constant = collapsed
    assert effective_rank(torch.zeros(100, d)) == 1.0
    with pytest.raises(ValueError):
        effective_rank(torch.zeros(0, d))


# ---- encoder ----


def test_encoder_is_causal_and_windowed():
    torch.manual_seed(0)
    m = small_module().eval()
    x = torch.randn(2, 20, D)
    z = m.encode(x)
    assert z.shape == (2, 20 - W + 1, 16)
    t = 12  # output index i is token i + W - 1
    x2 = x.clone()
    x2[:, t + 1] += 5.0
    z2 = m.encode(x2)
    before = t - W + 2  # outputs for tokens <= t
    torch.testing.assert_close(z2[:, :before], z[:, :before], rtol=0, atol=0)
    assert not torch.allclose(z2[:, before], z[:, before])  # token t+1 sees it
    # a token that left the window no longer matters
    x3 = x.clone()
    x3[:, 0] += 5.0
    torch.testing.assert_close(m.encode(x3)[:, 1:], z[:, 1:], rtol=0, atol=0)


def test_encode_sequence_one_z_per_token():
    torch.manual_seed(0)
    m = small_module().eval()
    m.set_standardization(torch.randn(D), torch.rand(D) + 0.5)
    h = torch.randn(30, D).half()
    z = m.encode_sequence(h)
    assert z.shape == (30, 16) and z.dtype == torch.float32
    # full windows agree with encode(); the first w-1 tokens see a repeated first row
    torch.testing.assert_close(z[W - 1 :], m.encode(h), rtol=1e-5, atol=1e-6)
    padded = torch.cat([h[:1].expand(W - 1, -1), h[:1]])
    torch.testing.assert_close(z[0], m.encode(padded)[0], rtol=1e-5, atol=1e-6)
    # chunking is invisible
    torch.testing.assert_close(m.encode_sequence(h, chunk_size=7), z, rtol=1e-5, atol=1e-6)
    assert m.encode_sequence(h[:1]).shape == (1, 16)


def test_bad_inputs_are_clear_value_errors():
    m = small_module()
    with pytest.raises(ValueError, match="d_input=32"):
        m.encode(torch.randn(2, 12, D + 1))
    with pytest.raises(ValueError, match=r"expected \(32,\)"):
        m.set_standardization(torch.zeros(D + 1), torch.ones(D + 1))
    with pytest.raises(ValueError, match="window \\+ max_horizon = 12"):
        trainer(max_steps=1).fit(m, DataLoader(TensorDataset(torch.randn(8, W + K - 1, D)), batch_size=4))


def test_hyperparameters_are_cli_friendly():
    sig = inspect.signature(RETModule.__init__)
    for name, p in list(sig.parameters.items())[1:]:
        assert p.annotation is not inspect.Parameter.empty, name
        assert name == "d_input" or p.default is not inspect.Parameter.empty, name


# ---- EMA target ----


def test_momentum_schedule_anneals_from_start_to_end():
    ms = [cosine_momentum(s, 100, 0.99, 1.0) for s in range(101)]
    assert ms[0] == pytest.approx(0.99) and ms[-1] == pytest.approx(1.0)
    assert ms[50] == pytest.approx(0.995)
    assert all(a <= b for a, b in zip(ms, ms[1:]))
    assert cosine_momentum(500, 100, 0.99, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(3, float("inf"), 0.99, 1.0) == 0.99


def test_ema_target_changes_after_steps():
    torch.manual_seed(0)
    m = small_module(lr=1e-2)
    theta0 = [p.detach().clone() for p in m.online.parameters()]
    t = trainer(max_steps=4)
    t.fit(m, DataLoader(TensorDataset(torch.randn(64, W + K, D)), batch_size=16))
    moved = [not torch.equal(pt, p0) for pt, p0 in zip(m.target.parameters(), theta0)]
    assert any(moved), "target encoder did not change"
    assert any(not torch.equal(pt, po) for pt, po in zip(m.target.parameters(), m.online.parameters()))
    assert all(not p.requires_grad for p in m.target.parameters())
    # the module anneals over the trainer's total steps (4 here)
    assert m.ema_momentum(0) == pytest.approx(0.99) and m.ema_momentum(4) == pytest.approx(1.0)


def test_single_ema_update_uses_post_step_weights():
    torch.manual_seed(0)
    m = small_module(lr=1e-2, ema_start=0.9, ema_end=0.9)  # constant momentum: exact check
    theta0 = [p.detach().clone() for p in m.online.parameters()]
    trainer(max_steps=1).fit(m, DataLoader(TensorDataset(torch.randn(16, W + K, D)), batch_size=16))
    for pt, p0, p1 in zip(m.target.parameters(), theta0, m.online.parameters()):
        torch.testing.assert_close(pt, 0.9 * p0 + 0.1 * p1)


# ---- training ----


def test_predictor_horizon_switch():
    torch.manual_seed(0)
    z = torch.randn(5, 16)
    blind = small_module(predictor_horizon=False).predictor
    torch.testing.assert_close(blind(z, 1), blind(z, K), rtol=0, atol=0)
    told = small_module(predictor_horizon=True).predictor
    assert not torch.allclose(told(z, 1), told(z, K))
    with pytest.raises(ValueError, match="outside 1..4"):
        blind(z, K + 1)


@pytest.mark.parametrize(
    "config",
    [{}, {"predictor_horizon": True, "var_weight": 1.0, "cov_weight": 0.04}],
    ids=["defaults", "horizon_predictor_vicreg"],
)
def test_training_learns_slow_latent_without_collapse(config):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    L.seed_everything(0)
    h, s = slow_latent_sequences()
    h_tr, h_va = h[:48], h[48:]
    m = small_module(lr=1e-3, **config)
    flat = h_tr.reshape(-1, D)
    m.set_standardization(flat.mean(0), flat.std(0))
    train = DataLoader(DictWindows(windows(h_tr)), batch_size=64, shuffle=True)
    val = DataLoader(DictWindows(windows(h_va, stride=12)), batch_size=256)
    before = trainer().validate(m, val, verbose=False)[0]
    rec = EpochMetrics()
    t = trainer(max_epochs=6, callbacks=[rec])
    t.fit(m, train, val)
    first, last = rec.history[0], rec.history[-1]
    assert last["val/pred_loss"] < 0.6 * before["val/pred_loss"], (before, last)
    assert last["train/loss_epoch"] < first["train/loss_epoch"]
    assert m.collapse_message is None
    assert len(m.effective_rank_history) == 6
    assert min(r for _, r in m.effective_rank_history) > m.hparams.collapse_threshold
    assert last["effective_rank"] == pytest.approx(m.effective_rank_history[-1][1])

    # the point of RET: clustering z recovers the slow state far better than clustering raw h
    m.eval()
    z = torch.cat([m.encode_sequence(x) for x in h_va])
    z = torch.nn.functional.normalize(z, dim=-1)
    truth = s[48:].reshape(-1).numpy()
    ari_z = adjusted_rand_score(truth, KMeans(4, n_init=4, random_state=0).fit_predict(z.numpy()))
    raw = m.standardize(h_va).reshape(-1, D).numpy()
    ari_raw = adjusted_rand_score(truth, KMeans(4, n_init=4, random_state=0).fit_predict(raw))
    assert ari_z > 0.5 and ari_z > ari_raw + 0.2, (ari_z, ari_raw)


COLLAPSE_RE = re.compile(
    r"^representation collapsed: effective rank \d+\.\d\d < threshold 1\.5 at epoch (\d+); try [^\n]*lower lr[^\n]*var_weight"
)


@pytest.mark.parametrize("case", ["no_regulariser_huge_lr", "constant_input_no_val_loop"])
def test_collapse_guard_stops_with_clear_message(case):
    L.seed_everything(0)
    if case == "no_regulariser_huge_lr":
        h, _ = slow_latent_sequences(n_seq=24, T=100, noise=1.0)
        m = small_module(z_dim=2, var_weight=0.0, cov_weight=0.0, lr=0.3, collapse_threshold=1.5)
        train, val = windows(h[:16]), DataLoader(TensorDataset(windows(h[16:])), batch_size=256)
    else:
        m = small_module(collapse_threshold=1.5)
        train, val = torch.ones(256, W + K, D), None
    t = trainer(max_epochs=10)
    with pytest.warns(UserWarning, match="representation collapsed"):
        t.fit(m, DataLoader(TensorDataset(train), batch_size=64, shuffle=True), val)
    assert t.should_stop
    ranks = [r for _, r in m.effective_rank_history]
    # stopped right after the first epoch whose rank fell below the threshold
    assert ranks[-1] < 1.5 and all(r >= 1.5 for r in ranks[:-1])
    assert t.current_epoch == len(ranks) < 10
    match = COLLAPSE_RE.match(m.collapse_message)
    assert match and int(match.group(1)) == len(ranks) - 1, m.collapse_message


# ---- checkpoints ----


def test_checkpoint_round_trip_keeps_standardisation_and_output(tmp_path):
    torch.manual_seed(0)
    m = small_module()
    mean, std = torch.randn(D), torch.rand(D) + 0.5
    m.set_standardization(mean, std)
    t = trainer(max_steps=2)
    t.fit(m, DataLoader(TensorDataset(torch.randn(32, W + K, D)), batch_size=16))
    path = tmp_path / "ret.ckpt"
    t.save_checkpoint(path)

    loaded = RETModule.load_from_checkpoint(path, weights_only=True).eval()
    m.eval()
    torch.testing.assert_close(loaded.h_mean, mean)
    torch.testing.assert_close(loaded.h_std, std)
    assert loaded.hparams == m.hparams
    h = torch.randn(40, D)
    torch.testing.assert_close(loaded.encode_sequence(h), m.encode_sequence(h), rtol=0, atol=0)
    for a, b in zip(loaded.target.parameters(), m.target.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_source_layers_recorded_as_a_list_and_old_string_form_still_loads(tmp_path):
    typed = RETModule(d_input=8, window=2, z_dim=2, hidden=4, predictor_hidden=4, source_layers=["embed", "3"])
    old = RETModule(d_input=8, window=2, z_dim=2, hidden=4, predictor_hidden=4, source_layers="embed,3")
    none = RETModule(d_input=8, window=2, z_dim=2, hidden=4, predictor_hidden=4)
    assert typed.hparams.source_layers == old.hparams.source_layers == ["embed", "3"]
    assert none.hparams.source_layers == []
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": dict(old.hparams)}, path)
    assert torch.load(path, weights_only=True)["hyper_parameters"]["source_layers"] == ["embed", "3"]
