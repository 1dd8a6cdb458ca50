"""``ret-steer``: generate with a steering vector or a RET group, optionally closed-loop or as an α sweep.

    ret-steer --vector happy --prompt "Tell me about your day." --alpha 0.5
    ret-steer --ret demo_out --group 3 --prompts reasoning --limit 4 --alpha 0.3
    ret-steer --ret demo_out --group 3 --detect 3 --when out --prompt "What is 7 times 8?"   # closed loop
    ret-steer --ret demo_out --group 3 --prompts reasoning --limit 16 --sweep --alphas 0,0.1,0.2,0.4 --out sweep3
    torchrun --standalone --nproc-per-node 4 --no-python ret-steer --ret demo_out --group 3 --prompts reasoning --sweep --out s4

``--ret DIR`` is a ret-demo / ret-macro output directory (``ret_macro.ckpt``,
``macrostates.h5`` and the store they were made from). ``--group G`` builds the
vector of group G there (group mean minus overall mean at the RET layer, scaled
to the median token norm; ``--save-vector`` keeps it); ``--vector PATH`` uses a
saved one instead. The sweep writes ``sweep.json`` and ``sweep.html`` into
``--out``: share of generated tokens in group G (RET groups of the *unsteered*
model re-reading the text) and perplexity under the unsteered model, per α.
Under torchrun each rank generates whole batches of the prompts on its own
device and rank 0 writes the sweep (with greedy decoding, the same sweep as
one process).

Check, then write: a ``--out`` directory holding a sweep with other settings,
and a ``--save-vector`` path holding another vector (or any other file), are
refused before anything is generated or written, unless ``--overwrite``; the
sweep's files are staged and moved into place when both are complete.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

from activation_cache.errors import InputError
from ret_toolkit.cli.base import (
    OneLineParser,
    add_chat_template_argument,
    add_placement_arguments,
    placement,
    run_cli,
)


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} {text!r}: expected comma-separated numbers like 0,0.25,0.5") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise InputError(f"{what} {text!r}: every value must be a finite number")
    return values


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} {text!r}: expected comma-separated group ids like 3 or 3,5") from None


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="ret-steer", description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("what to steer with (one of --vector / --group)")
    src.add_argument("--vector", help="saved steering vector (PATH.safetensors + PATH.json)")
    src.add_argument("--ret", metavar="DIR", help="ret-demo / ret-macro output directory")
    src.add_argument("--store", help="trajectory store for --group (default: the one recorded in DIR/macrostates.h5)")
    src.add_argument("--group", type=int, help="RET group: build its vector (and the sweep's target group)")
    src.add_argument("--layers", help="layer spec of the decoder blocks for the group vector, e.g. 15, -1 or middle (default: the RET layer; must be in the store)")
    src.add_argument("--save-vector", metavar="PATH", help="also save the group vector (PATH.safetensors + PATH.json)")
    src.add_argument("--overwrite", action="store_true",
                     help="replace a vector at --save-vector, or a sweep in --out, made with other settings")
    inp = p.add_argument_group("prompts (one of --prompt / --prompts)")
    inp.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    inp.add_argument("--prompts", help="prompt file (.txt / .jsonl) or built-in set (reasoning, chat)")
    inp.add_argument("--limit", type=int, default=None, help="first N prompts of --prompts")
    inp.add_argument("--no-chat", action="store_true", help="feed plain text as is (default: as one chat user turn, like ret-demo)")
    gen = p.add_argument_group("generation")
    gen.add_argument("--model", default=None, help="model spec (default: the embedded SmolLM2-135M-Instruct)")
    gen.add_argument("--alpha", type=float, default=0.5, help="steering coefficient (default 0.5; the vector is as long as a typical hidden state)")
    gen.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    gen.add_argument("--max-new-tokens", type=int, default=40)
    gen.add_argument("--batch-size", type=int, default=8)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--baseline", action="store_true", help="also print the unsteered continuation")
    loop = p.add_argument_group("closed loop (needs --ret)")
    loop.add_argument("--detect", metavar="G[,G...]", help="steer only while the detected macrostate is in (or out of) these groups")
    loop.add_argument("--when", choices=["in", "out"], default="in", help="steer while the group is in (default) / out of --detect")
    sw = p.add_argument_group("α sweep (needs --ret and --group)")
    sw.add_argument("--sweep", action="store_true", help="sweep α; write DIR/sweep.json and DIR/sweep.html")
    sw.add_argument("--alphas", default="0,0.1,0.2,0.3,0.5", help="α values of the sweep (0 is always added)")
    sw.add_argument("--out", help="output directory of the sweep (created)")
    sw.add_argument("--max-ppl-ratio", type=float, default=1.5, help="fluency budget for the best α (default 1.5)")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    add_chat_template_argument(p)
    add_placement_arguments(p)
    return p


def _check_args(a) -> None:
    """Everything that can be checked before a model is loaded."""
    if a.vector is None and a.group is None:
        raise InputError("give --vector PATH or --group G (with --ret DIR)")
    if a.vector and a.group is not None and not a.sweep:
        raise InputError("give --vector or --group, not both (with --sweep, --group names the target group)")
    if a.group is not None and a.ret is None:
        raise InputError("--group needs --ret DIR (a ret-demo / ret-macro output directory)")
    if (a.detect or a.sweep) and a.ret is None:
        raise InputError(f"{'--detect' if a.detect else '--sweep'} needs --ret DIR (the RET encoder reads the macrostate)")
    if a.sweep and a.group is None:
        raise InputError("--sweep needs --group G: the target group whose share is measured")
    if a.sweep and not a.out:
        raise InputError("--sweep needs --out DIR")
    if a.sweep and a.detect:
        raise InputError("--sweep and --detect do not combine; sweep open-loop, then try the closed loop")
    if a.chat_template and a.no_chat:
        raise InputError("--chat-template renders the prompts as chat; --no-chat feeds them as plain text: give one")
    if bool(a.prompt) == bool(a.prompts):
        raise InputError("give --prompt TEXT (repeatable) or --prompts FILE, not both or neither")
    if not math.isfinite(a.alpha):
        raise InputError(f"--alpha must be a finite number, got {a.alpha}")
    if not math.isfinite(a.max_ppl_ratio) or a.max_ppl_ratio <= 0:
        raise InputError(f"--max-ppl-ratio must be a positive number, got {a.max_ppl_ratio}")
    if a.max_new_tokens < 1 or a.batch_size < 1 or (a.limit is not None and a.limit < 1):
        raise InputError("--max-new-tokens, --batch-size and --limit must be >= 1")
    if a.vector:
        from ret_toolkit.steering.vector import SteeringVector

        for path in SteeringVector.paths(a.vector):
            if not path.is_file():
                raise InputError(f"steering vector file not found: {path}")
    if a.save_vector and a.vector:
        raise InputError("--save-vector saves the vector built from --group; --vector is already saved")
    if a.save_vector and not Path(a.save_vector).resolve().parent.is_dir():
        raise InputError(f"--save-vector: directory does not exist: {Path(a.save_vector).resolve().parent}")


def _prompts(a) -> list:
    from activation_cache.prompts import read_prompts

    if a.prompt:
        if not all(p.strip() for p in a.prompt):
            raise InputError("--prompt is empty")
        return list(a.prompt)
    prompts = read_prompts(a.prompts)
    return prompts[: a.limit] if a.limit else prompts


def _run(argv: Sequence[str]) -> int:
    from activation_cache.ranks import detect_rank, rank_device

    a = parser().parse_args(argv)
    _check_args(a)
    rank = detect_rank()
    if rank is not None and rank.world_size > 1 and not a.sweep:
        raise InputError(f"under torchrun ({rank.world_size} ranks) ret-steer shards an α sweep (--sweep) only")
    lead = rank is None or rank.rank == 0
    alphas = _floats(a.alphas, "--alphas") if a.sweep else []
    detect = _ints(a.detect, "--detect") if a.detect else []
    prompts = _prompts(a)
    out = _sweep_output(a, alphas) if a.sweep else None  # refuses other settings; writes nothing yet

    from ret_toolkit.steering import find_outputs, group_vector, load_reader
    from ret_toolkit.steering.vector import SteeringVector

    outputs = find_outputs(a.ret, store=a.store) if a.ret else None
    reader = load_reader(outputs.checkpoint) if outputs else None
    if reader is not None:  # unknown groups fail before the model is loaded
        if a.group is not None:
            reader.check_groups([a.group], "--group")
        if detect:
            reader.check_groups(detect, "--detect")

    from activation_cache.models import load_model, model_name

    # A checkpoint or vector made on another model is refused before that model is loaded (or converted).
    vec = SteeringVector.load(a.vector) if a.vector else None
    for made_on in (reader, vec):
        if made_on is not None:
            made_on.check_name(model_name(a.model))
    where = placement(a)
    if rank is not None and where["device_map"] is None:
        where["device"] = rank_device(where["device"], rank)
    loaded = load_model(a.model, chat_template=a.chat_template, progress=not a.quiet, **where)
    if reader is not None:
        reader.check_model(loaded)
    if vec is not None:
        vec.check_model(loaded)
    else:
        vec = group_vector(outputs, a.group, a.layers, model=loaded)
        vec.check_model(loaded)
        if a.save_vector and lead:  # before generating: another vector at the path is refused
            tensors_path, manifest_path = SteeringVector.paths(a.save_vector)
            existed = tensors_path.exists() and manifest_path.exists()
            paths = vec.save(a.save_vector, overwrite=a.overwrite)
            what = "already holds" if existed and not a.overwrite else "saved"
            print(f"ret-steer: {paths[0]} + {paths[1].name} {what} the group-{a.group} vector", file=sys.stderr)

    if a.sweep:
        from ret_toolkit.steering.evaluate import render_prompts

        return _sweep(a, out, loaded, reader, vec, alphas, render_prompts(loaded.tokenizer, prompts, chat=not a.no_chat),
                      rank)
    return _generate(a, loaded, reader, vec, detect, prompts)


#: Files a sweep writes into ``--out``.
SWEEP_FILES = ("sweep.json", "sweep.html")


def _sweep_output(a, alphas: list[float]):
    """The checked ``--out`` of a sweep: everything that determines sweep.json, recorded in ret_runs.json."""
    from activation_cache.outputs import OutputDir
    from ret_toolkit.steering.vector import SteeringVector

    def resolved(path):
        return None if path is None else str(Path(path).resolve())

    prompts = a.prompts
    if prompts is not None and Path(prompts).is_file():
        prompts = resolved(prompts)
    settings = {
        "ret": resolved(a.ret), "store": resolved(a.store), "group": a.group,
        "vector": resolved(SteeringVector.paths(a.vector)[0]) if a.vector else None,
        "layers": a.layers, "prompt": list(a.prompt), "prompts": prompts, "limit": a.limit, "chat": not a.no_chat,
        "model": a.model, "alphas": sorted({0.0, *alphas}), "positions": a.positions,
        "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size, "sample": a.sample, "seed": a.seed,
        "max_ppl_ratio": a.max_ppl_ratio,
    }
    return OutputDir(a.out, "ret-steer", settings, files=SWEEP_FILES, overwrite=a.overwrite)


def _generate(a, loaded, reader, vec, detect, prompts) -> int:
    from ret_toolkit.steering.generate import generate

    common = dict(max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, do_sample=a.sample, seed=a.seed,
                  chat=not a.no_chat)
    base = generate(loaded, prompts, **common) if a.baseline else None
    gens = generate(loaded, prompts, vec, a.alpha, positions=a.positions, reader=reader, detect=detect, when=a.when,
                    **common)
    for i, g in enumerate(gens):
        print(f"=== prompt {i}: {' '.join(g.prompt.split())}")
        if base is not None:
            print(f"--- unsteered:\n{base[i].text}")
            print(f"--- steered (alpha {a.alpha:g}):")
        print(g.text)
        if g.steered is not None:
            print(f"[closed loop: steered {g.steered} of {g.fed} fed-back tokens "
                  f"(steering while the macrostate is {a.when} {{{a.detect}}})]")
    return 0


def _sweep(a, out, loaded, reader, vec, alphas, prompt_ids, rank) -> int:
    from activation_cache.outputs import write_json
    from ret_toolkit.steering.evaluate import sweep
    from ret_toolkit.viz.steering import write_sweep_html

    result = sweep(loaded, loaded.tokenizer, reader, vec, a.group, alphas, prompt_ids, positions=a.positions,
                   max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, do_sample=a.sample, seed=a.seed,
                   rank=rank, max_ppl_ratio=a.max_ppl_ratio, progress=not a.quiet)
    if rank is not None and rank.rank != 0:  # every rank has the whole result; rank 0 writes and reports it
        return 0
    with out:  # staged; both files are moved into --out when both are written
        write_json(out.stage("sweep.json"), result.to_json())
        write_sweep_html(out.stage("sweep.html"), [result], a.max_ppl_ratio)
    best = result.best()
    print(result.table())
    print(f"ret-steer: best alpha {best.alpha:g} (perplexity within {a.max_ppl_ratio:g}x of alpha 0): share "
          f"{result.baseline.share:.3f} -> {best.share:.3f}; {out.final('sweep.json')}, {out.final('sweep.html')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("ret-steer", lambda: _run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
