"""One steering job, as ``ret-steer`` runs it: check everything, load the model once, then generate or sweep.

    from ret_toolkit.steering.run import run_steer
    from ret_toolkit.steering.settings import GenerationSettings, SteerSettings
    r = run_steer(SteerSettings(ret="demo_out", group=3, prompts="reasoning", limit=4, alpha=0.3),
                  GenerationSettings(max_new_tokens=24))
    print("\\n".join(r.lines()))

Check, then write: a sweep's ``out`` holding a sweep with other settings, and a
``save_vector`` path holding another vector (or any other file), are refused
before anything is generated or written, unless ``overwrite``; the sweep's
files are staged and moved into place when both are complete.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from activation_cache.errors import InputError, option
from activation_cache.ranks import Rank
from activation_cache.settings import placement_of
from ret_toolkit.steering.settings import GenerationSettings, SteerSettings

log = logging.getLogger(__name__)

#: Files a sweep writes into its output directory.
SWEEP_FILES = ("sweep.json", "sweep.html")


@dataclass
class SteerResult:
    """What :func:`run_steer` made: steered generations (and unsteered ones with ``baseline``), or a sweep.

    files: the files written (the sweep's two; empty for plain generation).
    """

    settings: SteerSettings
    generation: GenerationSettings
    generations: list = field(default_factory=list)
    baseline: list | None = None
    sweep: object | None = None
    files: tuple[Path, ...] = ()

    def lines(self) -> list[str]:
        """What ``ret-steer`` prints: each prompt with its continuation(s), or the sweep's table and best α."""
        s = self.settings
        if self.sweep is not None:
            best = self.sweep.best()
            return [self.sweep.table(),
                    f"ret-steer: best alpha {best.alpha:g} (perplexity within {s.max_ppl_ratio:g}x of alpha 0): share "
                    f"{self.sweep.baseline.share:.3f} -> {best.share:.3f}; {', '.join(map(str, self.files))}"]
        out = []
        for i, g in enumerate(self.generations):
            out.append(f"=== prompt {i}: {' '.join(g.prompt.split())}")
            if self.baseline is not None:
                out.append(f"--- unsteered:\n{self.baseline[i].text}")
                out.append(f"--- steered (alpha {s.alpha:g}):")
            out.append(g.text)
            if g.steered is not None:
                out.append(f"[closed loop: steered {g.steered} of {g.fed} fed-back tokens "
                           f"(steering while the macrostate is {s.when} {{{','.join(map(str, s.detect))}}})]")
        return out


def check_steer(s: SteerSettings, g: GenerationSettings) -> None:
    """Everything that can be checked before a model is loaded (InputError, one line)."""
    import math

    if s.chat_template and not g.chat:
        raise InputError(f"{option('chat_template')} renders the prompts as chat; {option('chat', False, flag='--no-chat')} feeds them "
                         "as plain text: give one")
    if s.vector is None and s.group is None:
        raise InputError(f"give {option('vector')} PATH or {option('group')} G (with {option('ret')} DIR)")
    if s.vector and s.group is not None and not s.sweep:
        raise InputError(f"give {option('vector')} or {option('group')}, not both (with {option('sweep')}, "
                         f"{option('group')} names the target group)")
    if s.group is not None and s.ret is None:
        raise InputError(f"{option('group')} needs {option('ret')} DIR (a ret-demo / ret-macro output directory)")
    if (s.detect or s.sweep) and s.ret is None:
        raise InputError(f"{option('detect') if s.detect else option('sweep')} needs {option('ret')} DIR "
                         "(the RET encoder reads the macrostate)")
    if s.sweep and s.group is None:
        raise InputError(f"{option('sweep')} needs {option('group')} G: the target group whose share is measured")
    if s.sweep and not s.out:
        raise InputError(f"{option('sweep')} needs {option('out')} DIR")
    if s.sweep and s.detect:
        raise InputError(f"{option('sweep')} and {option('detect')} do not combine; sweep open-loop, then try the "
                         "closed loop")
    if bool(s.prompt) == bool(s.prompts):
        raise InputError(f"give {option('prompt')} TEXT (repeatable) or {option('prompts')} FILE, not both or neither")
    if not math.isfinite(s.alpha):
        raise InputError(f"{option('alpha')} must be a finite number, got {s.alpha}")
    if not math.isfinite(s.max_ppl_ratio) or s.max_ppl_ratio <= 0:
        raise InputError(f"{option('max_ppl_ratio')} must be a positive number, got {s.max_ppl_ratio}")
    if s.limit is not None and s.limit < 1:
        raise InputError(f"{option('limit')} must be >= 1, got {s.limit}")
    if s.vector:
        from ret_toolkit.steering.vector import SteeringVector

        for path in SteeringVector.paths(s.vector):
            if not path.is_file():
                raise InputError(f"steering vector file not found: {path}")
    if s.save_vector and s.vector:
        raise InputError(f"{option('save_vector')} saves the vector built from {option('group')}; "
                         f"{option('vector')} is already saved")
    if s.save_vector and not Path(s.save_vector).resolve().parent.is_dir():
        raise InputError(f"{option('save_vector')}: directory does not exist: {Path(s.save_vector).resolve().parent}")


def _prompts(s: SteerSettings) -> list:
    from activation_cache.prompts import read_prompts

    if s.prompt:
        if not all(p.strip() for p in s.prompt):
            raise InputError(f"{option('prompt')} is empty")
        return list(s.prompt)
    prompts = read_prompts(s.prompts)
    return prompts[: s.limit] if s.limit else prompts


def _sweep_output(s: SteerSettings, g: GenerationSettings):
    """The checked output directory of a sweep: everything that determines sweep.json, recorded in ret_runs.json."""
    from activation_cache.outputs import OutputDir
    from ret_toolkit.steering.vector import SteeringVector

    def resolved(path):
        return None if path is None else str(Path(path).resolve())

    prompts = s.prompts
    if prompts is not None and Path(prompts).is_file():
        prompts = resolved(prompts)
    record = {
        "ret": resolved(s.ret), "store": resolved(s.store), "group": s.group,
        "vector": resolved(SteeringVector.paths(s.vector)[0]) if s.vector else None,
        "layers": s.layers, "prompt": list(s.prompt), "prompts": prompts, "limit": s.limit, "chat": g.chat,
        "model": s.model, "alphas": sorted({0.0, *s.alphas}), "positions": g.positions,
        "max_new_tokens": g.max_new_tokens, "batch_size": g.batch_size, "sample": g.sample, "seed": g.seed,
        "max_ppl_ratio": s.max_ppl_ratio,
    }
    return OutputDir(s.out, "ret-steer", record, files=SWEEP_FILES, overwrite=s.overwrite)


def run_steer(s: SteerSettings, g: GenerationSettings | None = None, *, progress: bool = True,
              rank: Rank | None = None) -> SteerResult:
    """Generate with ``s``'s vector (open or closed loop), or sweep α toward ``s.group``; see the module docstring.

    ``rank``: under torchrun (:func:`activation_cache.ranks.detect_rank`), each rank generates
    whole batches of the sweep's prompts on its own device and rank 0 writes the sweep
    (greedy decoding gives the sweep of one process); the other ranks return a result
    without files.
    """
    from activation_cache.ranks import rank_device

    g = g or GenerationSettings()
    check_steer(s, g)
    if rank is not None and rank.world_size > 1 and not s.sweep:
        raise InputError(f"under torchrun ({rank.world_size} ranks) ret-steer shards an α sweep "
                         f"({option('sweep')}) only")
    lead = rank is None or rank.rank == 0
    prompts = _prompts(s)
    out = _sweep_output(s, g) if s.sweep else None  # refuses other settings; writes nothing yet

    from ret_toolkit.steering.detect import load_reader
    from ret_toolkit.steering.ret_source import find_outputs, group_vector
    from ret_toolkit.steering.vector import SteeringVector

    outputs = find_outputs(s.ret, store=s.store) if s.ret else None
    reader = load_reader(outputs.checkpoint) if outputs else None
    if reader is not None:  # unknown groups fail before the model is loaded
        if s.group is not None:
            reader.check_groups([s.group], option("group"))
        if s.detect:
            reader.check_groups(list(s.detect), option("detect"))

    from activation_cache.models import load_model, model_name

    # A checkpoint or vector made on another model is refused before that model is loaded (or converted).
    vec = SteeringVector.load(s.vector) if s.vector else None
    for made_on in (reader, vec):
        if made_on is not None:
            made_on.check_name(model_name(s.model))
    where = placement_of(s)
    if rank is not None and where["device_map"] is None:
        where["device"] = rank_device(where["device"], rank)
    loaded = load_model(s.model, **where, chat_template=s.chat_template, progress=progress)
    if reader is not None:
        reader.check_model(loaded)
    if vec is not None:
        vec.check_model(loaded)
    else:
        vec = group_vector(outputs, s.group, s.layers, model=loaded)
        vec.check_model(loaded)
        if s.save_vector and lead:  # before generating: another vector at the path is refused
            tensors_path, manifest_path = SteeringVector.paths(s.save_vector)
            existed = tensors_path.exists() and manifest_path.exists()
            paths = vec.save(s.save_vector, overwrite=s.overwrite)
            what = "already holds" if existed and not s.overwrite else "saved"
            log.info("%s + %s %s the group-%s vector", paths[0], paths[1].name, what, s.group)

    result = SteerResult(s, g)
    if s.sweep:
        _sweep(result, out, loaded, reader, vec, prompts, rank, progress)
        return result
    from ret_toolkit.steering.generate import generate

    result.baseline = generate(loaded, prompts, settings=g) if s.baseline else None
    result.generations = generate(loaded, prompts, vec, s.alpha, settings=g, reader=reader, detect=s.detect,
                                  when=s.when)
    return result


def _sweep(result: SteerResult, out, loaded, reader, vec, prompts, rank, progress) -> None:
    from activation_cache.outputs import write_json
    from ret_toolkit.steering.evaluate import render_prompts, sweep
    from ret_toolkit.viz.steering import write_sweep_html

    s, g = result.settings, result.generation
    prompt_ids = render_prompts(loaded.tokenizer, prompts, chat=g.chat)
    result.sweep = sweep(loaded, loaded.tokenizer, reader, vec, s.group, s.alphas, prompt_ids, settings=g,
                         rank=rank, progress=progress)
    result.sweep.max_ppl_ratio = s.max_ppl_ratio
    if rank is not None and rank.rank != 0:  # every rank has the whole result; rank 0 writes and reports it
        return
    with out:  # staged; both files are moved into the directory when both are written
        write_json(out.stage("sweep.json"), result.sweep.to_json())
        write_sweep_html(out.stage("sweep.html"), [result.sweep], s.max_ppl_ratio)
    result.files = tuple(out.final(name) for name in SWEEP_FILES)


__all__ = ["SWEEP_FILES", "SteerResult", "check_steer", "run_steer"]
