"""``ret-vq-codes``: encode a store's blocks with a trained VQ checkpoint.

    ret-vq-codes --ckpt runs/vq/vq/version_0/checkpoints/last.ckpt --store traj.h5 --out prefix_codes.h5
    # the same single-token model, applied 3 tokens after the anchor:
    ret-vq-codes --ckpt token.ckpt --store traj.h5 --out t3.h5 --start 3 --stop 4 --align -8:10

Writes an HDF5 codes file (``/codes``, ``/sequence``, ``/anchor``); files made
with the same anchors and alignment line up row by row. The file records the
settings that made it; an existing ``--out`` made with other settings (or not
a codes file) is refused before anything is computed, unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Sequence

from ret_toolkit.cli.base import OneLineParser, run_cli


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="ret-vq-codes", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True, help="VQ checkpoint from ret-train vq")
    p.add_argument("--store", required=True, help="trajectory store of the same model")
    p.add_argument("--out", required=True, help="output .h5 codes file")
    p.add_argument("--layers", default=None, help="override the block's layers (same count as trained)")
    p.add_argument("--start", default=None, help="override the block's first offset from the anchor ('none' = sequence start)")
    p.add_argument("--stop", type=int, default=None, help="override the block's end offset (exclusive)")
    p.add_argument("--anchor", default=None, help="prompt_end, all, meta:<field> or a token index (default: as trained)")
    p.add_argument("--anchor-stride", type=int, default=None)
    p.add_argument("--align", default=None, metavar="START:STOP",
                   help="keep only anchors where the offsets START..STOP-1 all lie inside the sequence "
                        "(e.g. -8:10), so files for different blocks line up row by row")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out made with other settings")
    p.add_argument("--quiet", action="store_true")
    return p


def _align_block(spec: str, layers: str):
    from activation_cache.errors import InputError
    from ret_toolkit.vq.blocks import BlockSpec

    try:
        start, stop = (int(v) for v in spec.split(":"))
    except ValueError:
        raise InputError(f"--align {spec!r}: expected START:STOP offsets like -8:10") from None
    return BlockSpec(layers=layers, start=start, stop=stop)


def _run(argv: Sequence[str]) -> int:
    from activation_cache.errors import InputError
    from ret_toolkit.vq.codes import (
        check_codes_out,
        checkpoint_block,
        codes_settings,
        encode_store_blocks,
        load_vq,
        write_codes,
    )

    a = parser().parse_args(argv)
    if a.batch_size < 1 or (a.anchor_stride is not None and a.anchor_stride < 1):
        raise InputError("--batch-size and --anchor-stride must be >= 1")
    module = load_vq(a.ckpt)
    block = checkpoint_block(module)
    changes = {}
    if a.layers is not None:
        changes["layers"] = a.layers
    if a.start is not None:
        try:
            changes["start"] = None if a.start.lower() == "none" else int(a.start)
        except ValueError:
            raise InputError(f"--start {a.start!r}: expected an integer offset or 'none'") from None
    if a.stop is not None:
        changes["stop"] = a.stop
    block = dataclasses.replace(block, **changes)
    align = [_align_block(a.align, block.layers)] if a.align else []
    settings = codes_settings(module, a.ckpt, a.store, block, a.anchor, a.anchor_stride, align)
    # check, then write: --out may take these settings before the (slow) encoding, which checks
    # the store against the checkpoint first; nothing is written until write_codes
    check_codes_out(a.out, settings, overwrite=a.overwrite)
    codes, anchors = encode_store_blocks(module, a.store, block, a.anchor, a.anchor_stride, align,
                                         batch_size=a.batch_size, progress=not a.quiet)
    if len(codes) == 0:
        within = "the block and the --align range lie" if align else "the block lies"
        raise InputError(f"{a.store}: no anchor ({settings['anchor']}) where {within} inside the sequence; "
                         "nothing written")
    write_codes(a.out, codes, anchors, settings=settings, overwrite=a.overwrite, store=str(a.store),
                checkpoint=str(a.ckpt), model=module.hparams.source_model,
                block=json.dumps(dataclasses.asdict(block)), num_codes=module.hparams.num_codes)
    used = len(set(codes.tolist()))
    print(f"ret-vq-codes: {a.out}: {len(codes)} blocks, {used} of {module.hparams.num_codes} codes used")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("ret-vq-codes", lambda: _run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
