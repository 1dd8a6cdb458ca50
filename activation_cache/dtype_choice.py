"""The storage dtype ``auto``: the precision hidden states are stored in when the user does not choose one.

float16 keeps 11 bits of mantissa but tops out at ±65 504; bfloat16 keeps 8 bits
with float32's range. Modern LMs put huge values on the first token and on
delimiters (Gemma 3 270M: 68 398 at block 7 and 103 795 at block 14 on
``<bos>``; SmolLM2-135M about 25 000), so float16 cannot be the blind default.
``auto`` decides per model:

- a model that runs in bfloat16 or float16 stores its own dtype: exact;
- a model that runs in float32 (the CPU default) is probed on the first prompt
  of the whole source (the same for every shard): float16 when the largest
  magnitude over the stored layers is at most half of float16's range
  (:data:`FLOAT16_HEADROOM`), else bfloat16.

The choice and its reason are recorded in the store (``dtype``,
``dtype_choice``) and shown by ``--dry-run`` and ``ret-extract info``.
"""

from __future__ import annotations

#: Largest finite float16.
FLOAT16_MAX = 65504.0
#: ``auto`` stores float16 only when the probe's peak is at most this share of :data:`FLOAT16_MAX`.
FLOAT16_HEADROOM = 0.5


def choose_storage_dtype(requested: str, model_dtype: str, peak: float | None = None) -> tuple[str, str]:
    """``(dtype, why)`` of a store.

    Args:
        requested: ``"auto"``, or a dtype the user chose (returned as is).
        model_dtype: the dtype the model runs in (``LoadedModel.dtype``).
        peak: for ``auto`` with a float32 model, the largest ``|h|`` over the
            stored layers on the probe prompt (required then).
    """
    if requested != "auto":
        return requested, "as asked"
    if model_dtype in ("bfloat16", "float16"):
        return model_dtype, f"auto: the model runs in {model_dtype}, stored exactly"
    if peak is None:
        raise ValueError("auto storage for a float32 model needs the probe's peak")
    limit = FLOAT16_HEADROOM * FLOAT16_MAX
    if peak <= limit:
        return "float16", f"auto: peak |h| {peak:.0f} on the first prompt is within half of float16's range"
    return "bfloat16", f"auto: peak |h| {peak:.0f} on the first prompt passes half of float16's range (±65504)"
