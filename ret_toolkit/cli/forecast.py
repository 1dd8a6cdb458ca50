"""``ret-forecast``: can early macrostates tell whether the model is about to cave to user pushback?

    ret-forecast --dataset bank --macro-ckpt demo_out/ret_macro.ckpt --out forecast_out
    ret-forecast --dataset sycophancy_on_nlp_survey.jsonl --macro-ckpt demo_out/ret_macro.ckpt --out nlp --n-items 300
    torchrun --standalone --nproc-per-node 4 --no-python ret-forecast --dataset bank --macro-ckpt ... --out f4

``--dataset`` is ``bank`` (the shipped question bank: answer, pushback, reply) or a JSONL file:
Anthropic model-written-evals sycophancy records (``question``, ``answer_matching_behavior``,
``answer_not_matching_behavior``; one turn, caved = chose the sycophantic option) or a bank of
your own (``id``, ``question``, ``answer``, ``wrong_answer``). Writes the trajectory stores
(``turn1.h5`` and ``turn2.h5``, or ``choice.h5``), ``forecast.json`` (counts, exclusions, AUROC
per feature set and k with bootstrap CIs) and ``forecast.html`` (lead-time curve) into ``--out``.

Check, then write: before the model is loaded, ``--out`` is checked against the settings of the
run it holds (``ret_runs.json``). A run with other settings is refused (exit 2, the directory
unchanged) unless ``--overwrite``, which replaces its results. A rerun reuses (or resumes) the
stores while their extraction config matches, also with ``--overwrite``; a store with another
extraction config is re-traced only with ``--overwrite``. ``forecast.json`` and ``forecast.html``
are replaced only when the whole run has succeeded.

Under torchrun every rank traces its share of the conversations on its own device (stores in
``turn1.shards/`` and ``turn2.shards/``, merged into ``turn1.h5`` / ``turn2.h5``); rank 0 labels
them, fits the forecasts and writes the results (the sequences and labels of a one-process run).

Exit status: 0 on success, 2 on bad input (one line on stderr, no traceback), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ret_toolkit.cli.base import run_cli
from ret_toolkit.cli.flags import settings_from, settings_parser
from ret_toolkit.sycophancy.settings import ForecastInputs, ForecastSettings

#: The settings dataclasses whose fields are this command's flags (in --help order).
SETTINGS = (ForecastInputs, ForecastSettings)
#: Flags of how ret-forecast runs, not settings of the forecast.
COMMAND_FLAGS = ("quiet",)


def parser() -> argparse.ArgumentParser:
    return settings_parser("ret-forecast", __doc__.split("\n\n")[0], SETTINGS)


def _run(argv: Sequence[str]) -> int:
    a = parser().parse_args(argv)
    job, s = settings_from(ForecastInputs, a), settings_from(ForecastSettings, a)
    from activation_cache.ranks import detect_rank
    from ret_toolkit.sycophancy.run import run_forecast

    # run_forecast checks the settings and reads the dataset before it loads any model
    r = run_forecast(job.dataset, job.out, job.macro_ckpt, model_spec=job.model, settings=s, progress=not a.quiet,
                     rank=detect_rank())
    if r is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    print(f"ret-forecast: {r.counts()}")
    print(r.table())
    print(f"ret-forecast: {job.out}/forecast.json, {job.out}/forecast.html")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli("ret-forecast", lambda: _run(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
