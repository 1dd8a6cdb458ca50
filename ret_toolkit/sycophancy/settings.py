"""The settings of a forecast run: what it reads and where it runs (:class:`ForecastInputs`) and how (:class:`ForecastSettings`).

Each field is a ``ret-forecast`` flag of the same name (:mod:`ret_toolkit.cli.flags`).
Import-light: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from activation_cache.errors import InputError, option
from activation_cache.extract_config import check_storage
from activation_cache.settings import (chat_template_setting, compression_setting, device_map_setting,
                                       device_setting, dtype_setting, int_tuple, model_dtype_setting, model_setting,
                                       setting)

#: Default lead times: reply tokens read before forecasting.
LEADS = (0, 1, 2, 4, 8, 16)
#: One pushback template per item (``seeded``) or every template (``all``).
PUSHBACK_MODES = ("seeded", "all")


@dataclass(frozen=True)
class ForecastInputs:
    """What a forecast reads and where it writes (the ``ret-forecast`` flags besides :class:`ForecastSettings`).

    dataset: ``"bank"`` or a JSONL file. macro_ckpt: RET checkpoint with macrostates.
    out: output directory. model: a model spec (None: the embedded SmolLM2).
    """

    dataset: str = setting(help="'bank' or a JSONL file (Anthropic sycophancy format or your own bank)")
    macro_ckpt: str = setting(help="RET checkpoint with macrostates (ret_macro.ckpt from ret-macro / ret-demo)")
    out: str = setting(help="output directory (created)")
    model: str | None = model_setting("model spec as for ret-extract (default: the embedded SmolLM2-135M-Instruct)")


@dataclass(frozen=True)
class ForecastSettings:
    """Everything ``ret-forecast`` can set besides dataset, model, checkpoint and output.

    n_items: use this many items, spread evenly over the dataset (None: all).
    leads: lead times (reply tokens read before forecasting).
    max_new_tokens: reply tokens generated per turn (>= max(leads); the labeller reads them all).
    layer: store layer of the raw baseline (default: the RET checkpoint's layer).
    pushbacks: "seeded" (one template per item) or "all" (every template).
    folds, repeats, n_boot: cross-validation and (refitting) bootstrap sizes; pca_dims: raw-baseline PCA
    dimensions (default: as many as RET features).
    in_domain: also forecast from an in-domain RET: one encoder per outer fold (first CV
    repeat), trained on that fold's training conversations only, with the checkpoint's
    architecture (:mod:`.in_domain`); reported as ``in_domain`` with its paired differences.
    in_domain_epochs, in_domain_stride: its training epochs and window stride.
    chat_template: a Jinja chat template (a file path, or the template text) used instead of
    the tokenizer's own, e.g. to forecast on a base model, which has none.
    dtype, compression: how the stores keep the hidden states (as ``ret-extract``'s
    ``--dtype``, default ``auto``, and ``--compression``).
    overwrite: replace the results of a run with other settings in the output directory
    (refused otherwise). The stores are re-traced only where their extraction config
    differs from this run's (other items, model, layers, tokens, pushbacks, seed, batch
    size); the others are reused.
    device, model_dtype, device_map: where and in what precision the model runs (as
    :func:`~activation_cache.models.load_model`'s). Like ``overwrite`` they are not part of
    the run's recorded settings: the stores record the weight dtype they were traced in.
    """

    n_items: int | None = setting(None, "use N items spread over the dataset (quick runs)", metavar="N")
    leads: tuple[int, ...] = setting(LEADS, "lead times: reply tokens read before forecasting (default 0,1,2,4,8,16)",
                                  parse=int_tuple, metavar="N,N,...", aliases=("--ks",))
    max_new_tokens: int = setting(40, "reply tokens generated per turn (>= the largest lead)")
    layer: str | None = setting(None, "layer of the raw-hidden-state baseline (default: the RET checkpoint's layer)")
    pushbacks: str = setting("seeded", "one pushback template per item (seeded) or every template",
                             choices=PUSHBACK_MODES)
    seed: int = setting(0, "pushback assignment, bank sampling, folds and bootstrap")
    batch_size: int = setting(16, "conversations per batch (default 16)")
    folds: int = setting(5, "cross-validation folds (grouped by conversation)")
    repeats: int = setting(5, "cross-validation repeats with different fold shuffles")
    n_boot: int = setting(300, "resamples of conversations for the CIs; each reruns the cross-validation (default 300)",
                          aliases=("--bootstrap",))
    pca_dims: int | None = setting(None, "PCA dimensions of the raw baseline (default: as many as RET features)")
    in_domain: bool = setting(False, "also an in-domain RET: one encoder per outer fold, trained on its training "
                                     "conversations only")
    in_domain_epochs: int = setting(3, "training epochs of each in-domain RET")
    in_domain_stride: int = setting(4, "window stride of the in-domain RET training")
    chat_template: str | None = chat_template_setting()
    dtype: str = dtype_setting()
    compression: str | None = compression_setting()
    overwrite: bool = setting(False, "replace the results of a run with other settings in --out; stores are re-traced "
                                     "only where their extraction config differs, the others are reused")
    device: str | None = device_setting()
    model_dtype: str | None = model_dtype_setting()
    device_map: str | dict | None = device_map_setting()


#: ForecastSettings fields that are not recorded as the run's settings (how it runs, not what it computes).
UNRECORDED = ("overwrite", "device", "model_dtype", "device_map")


def check_settings(s: ForecastSettings) -> None:
    """InputError (one line) for settings that cannot work, before anything is loaded."""
    if s.n_items is not None and s.n_items < 1:
        raise InputError(f"{option('n_items')} must be >= 1, got {s.n_items}")
    if not s.leads or min(s.leads) < 0:
        raise InputError(f"{option('leads')} must be non-negative integers, got {','.join(map(str, s.leads))}")
    if s.max_new_tokens < max(s.leads) or s.max_new_tokens < 1:
        raise InputError(f"{option('max_new_tokens')} {s.max_new_tokens} must be >= 1 and >= the largest lead ({max(s.leads)})")
    if s.pushbacks not in PUSHBACK_MODES:
        raise InputError(f"{option('pushbacks')} must be {' or '.join(PUSHBACK_MODES)}, got {s.pushbacks!r}")
    for name, value, low in ((option("folds"), s.folds, 2), (option("repeats"), s.repeats, 1),
                             (option("n_boot"), s.n_boot, 10), (option("batch_size"), s.batch_size, 1)):
        if value < low:
            raise InputError(f"{name} must be >= {low}, got {value}")
    for name, value in ((option("in_domain_epochs"), s.in_domain_epochs), (option("in_domain_stride"), s.in_domain_stride)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    if s.pca_dims is not None and s.pca_dims < 1:
        raise InputError(f"{option('pca_dims')} must be >= 1, got {s.pca_dims}")
    if s.chat_template is not None:
        from activation_cache.prompts import read_chat_template

        read_chat_template(s.chat_template)
    check_storage(s.dtype, s.compression)
