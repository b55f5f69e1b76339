"""Render every results table in docs/results.md and the numbers README.md quotes from the committed JSON.

docs/methods.md's list of where each method differs from its official code is rendered the same way, from the
method registry (`zofed list` prints the same data).

    .venv/bin/python benchmarks/render_results.py           # rewrite the generated blocks in place
    .venv/bin/python benchmarks/render_results.py --check   # exit 1 and print a diff where a document is stale

A generated block is the text between `<!-- generated: NAME -->` and `<!-- end generated -->`; everything
outside the markers is hand-written prose and is left alone. NAME is a key of BLOCKS below; the same
block may appear in several documents (the quickstart table is in both). tests/test_render_results.py
runs the check, so a re-measured JSON cannot land without its text.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `benchmarks` is then not importable by itself
    sys.path.insert(0, str(ROOT))

from benchmarks import gamlpp_table  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = ("docs/results.md", "README.md", "docs/methods.md")
BLOCK = re.compile(r"<!-- generated: ([a-z0-9-]+) -->(.*?)<!-- end generated -->", re.S)  # names: lower-case


class RenderError(Exception):
    pass


def load(relative: str) -> dict:
    return json.loads((RESULTS / relative).read_text())


# --- formatting: one place, so every table writes numbers the same way ---

def whole(value: float) -> int:
    """Rounded half up, as a reader rounds (790.5 MB is 791 MB), not to the nearest even."""
    return int(Decimal(repr(value)).quantize(Decimal(1), ROUND_HALF_UP))


def mb(value: float) -> str:
    return f"{whole(value):,} MB"


def times(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}×"


def sci(value: float) -> str:
    """6e-4, 1.2e-3: learning rates as the configs write them."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def bold(text: str, when: bool = True) -> str:
    return f"**{text}**" if when else text


def table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"
    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])


def provenance(*relatives: str) -> str:
    """Which JSON a block comes from and what it records of its run (or says it did not record); sources that
    record the same are named together."""
    grouped: dict[str, list[str]] = {}
    for relative in relatives:
        grouped.setdefault(measured(load(relative)), []).append(f"[`{relative}`](../benchmarks/results/{relative})")
    return "<sub>From " + "; ".join(f"{', '.join(links)}: {facts}" for facts, links in grouped.items()) + ".</sub>"


def measured(document: dict) -> str:
    """What a result records of the run that measured it: commit, machine, load before and after."""
    commit = document.get("commit")
    load_before, load_after = document.get("load_average_before"), document.get("load_average_after")
    if load_before is None and "load_average_before_after" in document:
        load_before, load_after = document["load_average_before_after"]
    machine = document.get("machine") or {}
    facts = [f"commit `{commit[:7]}`" if commit else "commit not recorded",
             f"{machine.get('cores')}-core {machine.get('cpu')}" if machine else "machine not recorded",
             f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after" if load_before and load_after
             else "load not recorded"]
    if "resolved_configs" in document.get("not_recorded", []):
        facts.append("resolved config not recorded")
    return ", ".join(facts)


def labels(*relatives: str, methods: tuple[str, ...] | None = None) -> list[str]:
    """Notes a result carries about how a method's rows were run (`labels` in its JSON: a setting since changed),
    as footnote lines; `methods`: only those the table shows (default: all)."""
    notes = []
    for relative in relatives:
        for method, text in load(relative).get("labels", {}).items():
            line = f"<sub>Note: `{method}` {text}.</sub>"
            if (methods is None or method in methods) and line not in notes:
                notes.append(line)
    return notes


def block(body: str, *relatives: str, methods: tuple[str, ...] | None = None) -> str:
    return "\n\n".join([body, *labels(*relatives, methods=methods), provenance(*relatives)])


def by_session(body: str, relative: str, each: str, headers: list[tuple[str, dict]]) -> str:
    """`block` for a result whose parts (`headers`: a name and the header it was measured under) were measured in
    separate sessions: each session's commit, machine and load under the table, the parts it measured named."""
    sessions: dict[str, list[str]] = {}
    for name, header in headers:
        sessions.setdefault(measured(header), []).append(name)
    if len(sessions) < 2:
        return block(body, relative)
    lines = [f"<sub>{', '.join(names)}: {facts}.</sub>" for facts, names in sessions.items()]
    return "\n\n".join([body, *lines,
                        f"<sub>From [`{relative}`](../benchmarks/results/{relative}), {each} measured as said above.</sub>"])


# --- the blocks ---

def quickstart(short: bool = False) -> str:
    document = load("quickstart.json")
    summary = document["summary"]
    earlier = document.get("earlier", {})
    test_drop = summary["final_test_loss"] / summary["initial_test_loss"] - 1
    rows = [
        ["`make demo` on a fresh clone (venv + install + first GGUF conversion + run)",
         f"**{earlier['make_demo']['value']}** (goal ≤ 10 min; {earlier['make_demo']['note']})"],
        ["`zofed run configs/quickstart.yaml` alone (model cached)",
         f"{int(summary['wall_s'] // 60)} min {summary['wall_s'] % 60:.0f} s"
         + (f" ({document['wall_note']})" if document.get("wall_note") else "")],
        ["test loss, before → after",
         f"**{summary['initial_test_loss']:.3f} → {summary['final_test_loss']:.3f} ({test_drop:+.0%})** (goal ≥ 10% drop)"
         .replace("(-", "(−")],
        ["validation loss, before → after", f"{summary['initial_eval_loss']:.3f} → {summary['final_eval_loss']:.3f}"],
        [f"test accuracy (exact match, {document['accuracy_examples']} held-out questions), before → after",
         f"**{summary['initial_test_exact_match']:.1%} → {summary['final_test_exact_match']:.1%}**"],
        ["bytes up / down, whole run (LoRA weights both ways)",
         f"{summary['bytes_up'] / 1e6:.1f} MB / {summary['bytes_down'] / 1e6:.1f} MB"],
    ]
    notes = [] if short else [f"<sub>Earlier: {item['value']} ({item['note']}).</sub>" for key, item in earlier.items()
                              if key != "make_demo"]
    return "\n\n".join([table(["", ""], rows), *notes, provenance("quickstart.json")])


def lr_auto() -> str:
    relative = "lr_auto_issue24.json"
    document = load(relative)
    rows = []
    for row in document["rows"]:
        probe = row["auto"]["probe"]
        rows.append([row["method"] if row["task"] == "quickstart" else f"{row['task']} / {row['method']}",
                     f"{row['auto']['lr']:g}", f"{row['auto']['final_eval_loss']:.4f}",
                     f"{row['hand_tuned']['lr']:g}", f"{row['hand_tuned']['final_eval_loss']:.4f}",
                     f"{row['loss_gap']:+.1%}",
                     f"{probe['forward_passes']} / {row['auto']['run_forward_passes']} ({row['probe_cost']:.0%})",
                     ", ".join("met" if row[goal] else "**missed**" for goal in ("meets_loss_goal", "meets_cost_goal"))])
    goals = document["goals"]
    header = ["method", "auto lr", "val loss, auto", "hand lr", "val loss, hand", "gap", "probe forwards / run's",
              f"goals (≤ {goals['loss_gap_at_most']:+.0%}, ≤ {goals['probe_cost_at_most']:.0%})"]
    # rows measured in separate sessions carry their own header (rows[].measured)
    return by_session(table(header, rows), relative, "each row",
                      [(row["method"] if row["task"] == "quickstart" else f"{row['task']} / {row['method']}", row["measured"])
                       for row in document["rows"] if "measured" in row])


def eval_metrics() -> str:
    relative = "eval_metrics.json"
    document = load(relative)
    metric = {"gsm8k": ("gsm8k_answer", "GSM8K answer accuracy (official test split)"),
              "alpaca": ("rouge_l", "Alpaca Rouge-L (held-out instructions)")}
    rows = []
    for task, run in document["runs"].items():
        summary = run["summary"]
        name, title = metric[task]
        rows.append([title, f"{summary[f'initial_test_{name}']:.4f}", f"{summary[f'final_test_{name}']:.4f}",
                     f"{summary['initial_test_loss']:.4f}", f"{summary['final_test_loss']:.4f}"])
    header = ["metric", "before", "after", "test loss before", "test loss after"]
    # tasks measured in separate sessions carry their own header (runs.<task>.measured)
    return by_session(table(header, rows), relative, "each task's run",
                      [(task, run["measured"]) for task, run in document["runs"].items() if "measured" in run])


def gamlpp() -> str:
    return gamlpp_table.table(RESULTS / "gamlpp_heterogeneous")


def _cases(document: dict) -> dict[tuple[str, str], float]:
    return {(case["algorithm"], case["mode"]): case["peak_rss_mb"] for case in document["cases"]}


BACKPROP = (("fedavg-sgd", "SGD"), ("fedavg-adamw", "AdamW"))  # client_memory.json's backprop FedAvg cases


def _fraction(zo: float, backprop: float) -> str:
    """FedMeZO's memory as a fraction of backprop FedAvg's, as the paper states it ("about half")."""
    return f"{zo / backprop:.2f}"


def client_memory() -> str:
    relative = "client_memory.json"
    document = load(relative)
    peak = {key: whole(value) for key, value in _cases(document).items()}  # ratios of the MB shown
    params = {case["mode"]: case["trainable_params"] for case in document["cases"]}
    rows = []
    for mode, title in (("lora", "LoRA"), ("full", "full")):
        zo = [peak[(name, mode)] for name in ("fedmezo", "fedmezo-seeds") if (name, mode) in peak]
        cells = [bold(mb(peak[(name, mode)]), peak[(name, mode)] == min(zo)) if (name, mode) in peak else "–"
                 for name in ("fedmezo", "fedmezo-seeds")]
        ratios = []
        for backprop, _ in BACKPROP:
            ratio = _fraction(peak[("fedmezo", mode)], peak[(backprop, mode)])
            if ("fedmezo-seeds", mode) in peak:
                ratio += f" ({_fraction(peak[('fedmezo-seeds', mode)], peak[(backprop, mode)])} seeds up)"
            ratios.append(ratio)
        rows.append([f"{title} ({params[mode] / 1e6:.{2 if params[mode] < 1e7 else 1}f}M params)",
                     mb(peak[("inference", mode)]), *cells, *(mb(peak[(name, mode)]) for name, _ in BACKPROP), *ratios])
    header = ["trainable", "inference only", "FedMeZO, weights up", "FedMeZO, seeds up",
              *(f"backprop FedAvg ({optimizer})" for _, optimizer in BACKPROP),
              *(f"FedMeZO / FedAvg-{optimizer}" for _, optimizer in BACKPROP)]
    return block(table(header, rows), relative)


def _step_rows(results: list[dict], speedup_goal: float = 3.0) -> list[list[str]]:
    rows = []
    for row in results:
        rows.append([{"lora": "LoRA"}.get(row["mode"], row["mode"]), row["dtype"], f"{2 * row['forward_s']:.2f} s",
                     bold(times(row["ratio_pool_to_two_forwards"])), times(row["ratio_gaussian_to_two_forwards"]),
                     times(row["ratio_reference_to_two_forwards"]),
                     bold(times(row["speedup_vs_reference"], 1), row["speedup_vs_reference"] >= speedup_goal),
                     " / ".join(f"{whole(row[key])}" for key in ("peak_rss_inference_mb", "peak_rss_zo_mb",
                                                                "peak_rss_backprop_mb")) + " MB"])
    return rows


STEP_HEADER = ["mode", "dtype", "2 forwards", "pool step", "gaussian step", "reference", "pool vs reference",
               "RSS inference / ZO / backprop"]


def step(relative: str):
    return lambda: block(table(STEP_HEADER, _step_rows(load(relative)["results"])), relative)


def step_before_after() -> str:
    relative = "step_smollm2_before_after.json"
    document = load(relative)
    rows = []
    for before, after in zip(document["before"]["results"], document["after"]["results"]):
        def pair(key: str, digits: int = 2) -> str:
            return f"{times(before[key], digits)} → {times(after[key], digits)}"
        rows.append([{"lora": "LoRA"}.get(after["mode"], after["mode"]),
                     f"{2 * before['forward_s']:.2f} s / {2 * after['forward_s']:.2f} s",
                     pair("ratio_pool_to_two_forwards") + f" ({before['zo_step_pool_s']:.2f} s → {after['zo_step_pool_s']:.2f} s)",
                     pair("ratio_gaussian_to_two_forwards"), pair("ratio_reference_to_two_forwards"),
                     pair("speedup_vs_reference", 1)])
    header = ["mode", "2 forwards before / after", "pool step before → after", "gaussian", "reference",
              "pool vs reference"]
    commits = f"<sub>Before: commit `{document['before']['commit'][:7]}`; after: `{document['after']['commit'][:7]}`.</sub>"
    return "\n\n".join([table(header, rows), commits, provenance(relative)])


def fedmezo_memory() -> str:
    relative = "reproduce/fedmezo-memory/results.json"
    peak = {key: whole(value) for key, value in _cases(load(relative)).items()}
    rows = []
    for name, mode, title in (("fedmezo", "lora", "LoRA"), ("fedmezo-seeds", "full", "full, seeds up"),
                              ("fedmezo", "full", "full, weights up")):
        rows.append([title, mb(peak[("inference", mode)]), mb(peak[(name, mode)]),
                     *(mb(peak[(backprop, mode)]) for backprop, _ in BACKPROP),
                     *(bold(_fraction(peak[(name, mode)], peak[(backprop, mode)]), optimizer == "SGD")
                       for backprop, optimizer in BACKPROP)])
    header = ["trainable", "inference", "FedMeZO", *(f"backprop FedAvg ({optimizer})" for _, optimizer in BACKPROP),
              "FedMeZO / FedAvg-SGD (the paper's baseline)", "FedMeZO / FedAvg-AdamW"]
    return block(table(header, rows), relative)


def fedmezo_lr() -> str:
    relative = "reproduce/fedmezo-lr/results.json"
    document = load(relative)
    strategies = document["table"]
    best_eval = min(row["final_eval_loss"] for row in strategies.values())
    best_test = min(row["final_test_loss"] for row in strategies.values())
    fastest = min(row["round_to_target"] for row in strategies.values() if row["round_to_target"] is not None)
    rows = []
    for name, row in strategies.items():
        before = document["runs"][name]["summary"]["initial_eval_loss"]
        after = bold(f"{row['final_eval_loss']:.3f}", row["final_eval_loss"] == best_eval)
        rows.append([name, f"{before:.3f} → {after}",
                     bold(str(row["round_to_target"]), row["round_to_target"] == fastest) if row["round_to_target"] else "not reached",
                     f"{'yes' if row['decreasing_every_eval'] else 'no'} ({row['evals_decreasing']}/{row['evals']})",
                     bold(f"{row['final_test_loss']:.3f}", row["final_test_loss"] == best_test)])
    header = ["lr strategy", f"validation loss, round 0 → {max(r['evals'] for r in strategies.values())}",
              f"round reaching {document['target_eval_loss']:.3f}", "decreased at every evaluation", "test loss after"]
    return block(table(header, rows), relative)


# What a result ran that its JSON does not record (measured before results recorded their resolved config) and
# that its config no longer says: from the config's history, so a table does not pass it off as today's config.
RAN_WITH = {
    # benchmarks/reproduce/fedkseed_bytes.yaml from d305300 until it became full-parameter (issue 26)
    "reproduce/fedkseed-bytes/results.json": {"trainable": {"mode": "lora", "r": 8,
                                                            "target_modules": ["q_proj", "v_proj"]}},
}


def trainable_part(relative: str, document: dict, run: str, config: str) -> str:
    """'LoRA r=8 on q/v' or 'full-parameter': what `run` of a result trained, and whether the config
    (relative to the repository) still says so."""
    recorded = (document.get("resolved_configs") or {}).get(run) or RAN_WITH.get(relative)
    if recorded is None:
        raise RenderError(f"{relative}: no resolved config for '{run}' and no RAN_WITH entry: say what it trained")
    def text(trainable: dict) -> str:
        if trainable["mode"] == "full":
            return "full-parameter"
        modules = "/".join(name.removesuffix("_proj") for name in trainable.get("target_modules", []))
        return f"LoRA r={trainable['r']}" + (f" on {modules}" if modules else "")
    ran = text(recorded["trainable"])
    now = text(yaml.safe_load((RESULTS.parents[1] / config).read_text())["trainable"])  # the checkout's config
    return ran if ran == now else f"{ran} (the config is now {now}; not yet re-measured)"


def fedkseed_bytes() -> str:
    relative = "reproduce/fedkseed-bytes/results.json"
    document = load(relative)
    trained = trainable_part(relative, document, "fedkseed", "benchmarks/reproduce/fedkseed_bytes.yaml")
    last = document["last_round_per_client"]
    clients = document["runs"][0]["summary"]["clients"]
    scalars = document["per_round"]["fedkseed"][-1]["up_by_kind"]["records"] / clients
    titles = {"fedkseed": "FedKSeed (K=4096)", "fedmezo": "FedMeZO (weights upload, as published)", "decomfl": "DeComFL (P=1)"}
    rows = []
    for name, title in titles.items():
        ratio = last[name]["up"] / last["fedkseed"]["up"]
        up = f"{last[name]['up']:,.0f}"
        rows.append([title, bold(up) + f" ({scalars:,.0f} of them the K scalars)" if name == "fedkseed" else up,
                     f"{last[name]['down']:,.0f}", "1×" if name == "fedkseed" else f"{ratio:.2g}×" if ratio < 1 else f"{ratio:.0f}×"])
    header = ["method", "uplink B / client / round", "downlink B / client / round (steady state)", "uplink vs FedKSeed"]
    return block(f"Trained: **{trained}**.\n\n" + table(header, rows), relative)


def _first_at_or_below(curve: list[dict], target: float) -> dict:
    return next(point for point in curve if point["eval_loss"] <= target + 1e-12)


def _interpolated_layer_forwards(curve: list[dict], target: float) -> float:
    """Where the loss crosses the target, linearly between evaluations (cost is only known at round ends)."""
    for before, after in zip(curve, curve[1:]):
        if after["eval_loss"] <= target < before["eval_loss"]:
            share = (before["eval_loss"] - target) / (before["eval_loss"] - after["eval_loss"])
            return before["layer_forwards"] + share * (after["layer_forwards"] - before["layer_forwards"])
    return _first_at_or_below(curve, target)["layer_forwards"]


FEDSPZO_NAMES = {"split_layer": "s", "p1": "P1", "p2": "P2"}
FEDSPZO_ROWS = (  # (setting, result directory, digits of the target loss)
    ("quickstart", "reproduce/fedspzo-quickstart", 3),
    ("quickstart", "reproduce/fedspzo-quickstart/fedspzo_lr-1.2e-3", 3),
    ("quickstart", "reproduce/fedspzo-quickstart/fedspzo_lr-1.2e-3_split_layer-24_p2-2", 3),
    ("GSM8K", "reproduce/fedspzo-gsm8k", 4),
)
FEDSPZO_CONTROL = "reproduce/fedspzo-quickstart/fedmezo_lr-1.2e-3_control"


def _fedspzo_settings(settings: dict) -> str:
    return ", ".join(f"{FEDSPZO_NAMES.get(key, key)}={sci(value) if key in ('lr', 'mu') else value}"
                     for key, value in settings.items())


def fedspzo() -> str:
    rows, sources = [], []
    for setting, directory, digits in FEDSPZO_ROWS:
        relative = f"{directory}/results.json"
        sources.append(relative)
        document = load(relative)
        reached, speedup = document["reached"], document["speedup_fedmezo_over_fedspzo"]
        rows.append([setting, _fedspzo_settings(document["fedspzo_settings"]), f"{document['target_eval_loss']:.{digits}f}",
                     *(f"{reached[m]['round']}, {reached[m]['layer_forwards']:,}, {reached[m]['wall_s']:,.0f} s"
                       for m in ("fedmezo", "fedspzo")),
                     bold(times(speedup["layer_forwards"])), times(speedup["wall_s"])])
    # The control: FedMeZO run alone at the tuned split's lr (its summary and metrics), against that split's FedSPZO.
    rounds = [json.loads(line) for line in (RESULTS / FEDSPZO_CONTROL / "metrics.jsonl").read_text().splitlines() if line]
    split = load(FEDSPZO_ROWS[2][1] + "/results.json")
    spzo_curve = split["runs"]["fedspzo"]["curve"]
    target = max(min(r["eval_loss"] for r in rounds if r.get("eval_loss") is not None),
                 min(point["eval_loss"] for point in spzo_curve))
    mezo = next(r for r in rounds if r.get("eval_loss") is not None and r["eval_loss"] <= target + 1e-12)
    mezo_lf = sum(r["layer_forwards"] for r in rounds if r["round"] <= mezo["round"])
    mezo_s = sum(r["seconds"] for r in rounds if r["round"] <= mezo["round"])
    spzo = _first_at_or_below(spzo_curve, target)
    interpolated = mezo_lf / _interpolated_layer_forwards(spzo_curve, target)
    rows.insert(3, ["quickstart, control", f"same, against FedMeZO at lr={sci(split['fedspzo_settings']['lr'])}",
                 f"{target:.3f}", f"{mezo['round']}, {mezo_lf:,}, {mezo_s:,.0f} s¹",
                 f"{spzo['round']}, {spzo['layer_forwards']:,}, {spzo['wall_s']:,.0f} s",
                 bold(times(mezo_lf / spzo["layer_forwards"])) + f" (≈{times(interpolated)} interpolated)", "–"])
    header = ["setting", "FedSPZO settings", "target loss", "FedMeZO: round, layer-fwd, wall",
              "FedSPZO: round, layer-fwd, wall", "speed-up layer-fwd", "speed-up wall"]
    notes = ["¹ The control ran later, with less contention for the CPU, so its wall time is not comparable."]
    control_source = f"{FEDSPZO_CONTROL}/summary.json"
    return "\n\n".join([table(header, rows), *notes, *labels(*sources, control_source),
                         provenance(*sources, control_source)])


ZORBA_TITLES = {"fedmezo": "FedMeZO (full, seeds up)", "fedkseed": "FedKSeed (full)",
                "fedavg": "FedAvg (full, backprop, SGD)"}
ZORBA_DEVICES = ("smallest", "middle", "largest")


def _zorba_peaks(document: dict) -> tuple[float, list[dict]]:
    reference = next(m["peak_rss_mb"] for m in document["memory"] if m["algorithm"] == "fedmezo")
    return reference, sorted((m for m in document["memory"] if m["algorithm"] == "zorba"), key=lambda m: m["client"])


def zorba_memory() -> str:
    relative = "zorba_memory.json"
    document = load(relative)
    layers = len(document["profile"]["block_mb"])
    reference, clients = _zorba_peaks(document)
    rows = [[ZORBA_TITLES.get(m["algorithm"], m["algorithm"]), str(layers), "–", mb(m["peak_rss_mb"]),
             f"{m['peak_rss_mb'] / reference:.2f}"] for m in document["memory"] if m["algorithm"] != "zorba"]
    smallest = min(m["peak_rss_mb"] for m in clients)
    for name, m in zip(ZORBA_DEVICES, clients):
        active = str(len(m["active_blocks"]))
        if m["budget_mb"] - m["predicted_mb"] > 0.1 * m["budget_mb"]:  # much of the budget left unused
            active += " (the plan needs no more)"
        lowest = m["peak_rss_mb"] == smallest
        rows.append([f"ZorBA, {name} device", active, mb(m["budget_mb"]), bold(mb(m["peak_rss_mb"]), lowest),
                     bold(f"{m['peak_rss_mb'] / reference:.2f}", lowest)])
    header = ["client", "active layers", "budget", "peak RSS", "vs full-parameter FedMeZO"]
    return block(table(header, rows), relative)


def zorba_loss() -> str:
    relative = "zorba_memory.json"
    document = load(relative)
    losses = document["loss_at_equal_rounds"]
    before = next(iter(losses.values()))["initial_test_loss"]
    rows = []
    for name, row in losses.items():
        up = row["bytes_up_per_client_round"]
        rows.append([name, f"{row['final_test_loss']:.3f}", f"{up:,.0f} B" if up < 1e3 else f"{up / 1e3:,.1f} kB" if up < 1e6
                     else f"{up / 1e6:,.0f} MB", f"{row['bytes_down_per_client_round'] / 1e6:,.0f} MB"])
    header = [f"method ({document['rounds']} rounds)", f"final test loss (from {before:.3f})", "up / client / round",
              "down / client / round"]
    return block(table(header, rows), relative)


ZORBA_FAMILY = ("zorba_memory.json", "zorba_memory_smollm2-360m.json", "zorba_memory_smollm2-1.7b.json",
                "zorba_memory_smollm2-1.7b_constrained.json")


def zorba_family() -> str:
    rows = []
    for relative in ZORBA_FAMILY:
        document = load(relative)
        profile = [o.split("=", 1)[1] for o in document["overrides"] if o.startswith("zorba.device_profile=")][-1]
        model = ("SmolLM2-135M (real weights)" if document["shape"] is None
                 else f"SmolLM2-{document['shape'].removeprefix('smollm2-').upper()} shape")
        reference, clients = _zorba_peaks(document)
        ratios = [m["peak_rss_mb"] / reference for m in clients]
        goal = ratios[0] <= 0.6  # issue 5's goal: at least 40% below full-parameter FedMeZO
        rows.append([f"{model}, `{profile}`", mb(reference),
                     f"{bold(mb(clients[0]['peak_rss_mb']), goal)} ({len(clients[0]['active_blocks'])} of "
                     f"{len(document['profile']['block_mb'])})", bold(f"{ratios[0]:.2f}", goal),
                     ", ".join(f"{r:.2f}" for r in ratios[1:])])
    header = ["model", "FedMeZO peak", "ZorBA smallest device (active layers)", "ratio", "other devices"]
    return block(table(header, rows), *ZORBA_FAMILY, methods=("zorba", "fedmezo"))


def step_bf16_rounding() -> str:
    relative = "step_bf16_rounding.json"
    document = load(relative)
    goal = document["goal"]["bf16_full_pool_step_over_two_forwards_at_most"]
    rows = []
    for name, run in document["runs"].items():
        for row in run["results"]:
            ratio = row["ratio_pool_to_two_forwards"]
            rows.append([run["what"], f"`{document['commits'][name][:7]}`", row["dtype"], f"{2 * row['forward_s']:.2f} s",
                         bold(times(ratio), row["dtype"] != "fp32" and ratio <= goal)])
    header = ["update", "commit", "dtype", "2 forwards", f"pool step / 2 forwards (bf16 goal ≤ {goal}×)"]
    return block(table(header, rows), relative)


def flower_overhead() -> str:
    """Generic: one column per part of the round that any runtime reports, so new fields add columns; the rounds
    after the first, then the first round (start-up: Ray's, a warm node's worker start and model load) apart."""
    relative = "flower_overhead.json"
    runtimes = load(relative)["runtimes"]
    def number(value, form: str) -> str:
        return format(value, form) if isinstance(value, (int, float)) else "–"

    tables = []
    for breakdown_key, round_key, title, against_local in (
            ("breakdown_after_first", "round_s_median_after_first", "round s (median after the first)", True),
            ("breakdown_first_round", "first_round_s", "first round s", False)):
        parts = []
        for row in runtimes.values():
            parts += [key for key in row.get(breakdown_key, {}) if key not in parts and key != "round_s"]
        rows = [[name, f"{row[round_key]:.2f}", *(number(row.get(breakdown_key, {}).get(key), ".2f") for key in parts),
                 *([number(row.get("overhead_vs_local"), "+.0%")] if against_local else [])]
                for name, row in runtimes.items()]
        header = ["runtime", title, *(key.removesuffix("_s").replace("_", " ") + " s" for key in parts),
                  *(["vs local"] if against_local else [])]
        tables.append(table(header, rows))
    return block("\n\n".join(tables), relative)


README_STEPS = (("step_smollm2_avx2.json", "SmolLM2-135M", ("lora", "full")),
                ("step_ladder_cpu.json", None, ("full",)))


def hardware() -> str:
    rows = []
    for relative, title, modes in README_STEPS:
        for row in load(relative)["results"]:
            if row["mode"] not in modes or row["dtype"] != "fp32":
                continue
            reference = ""
            if row["mode"] == "full":
                whose = "MeZO's reference" if title else "reference"
                reference = f" ({whose}: {times(row['ratio_reference_to_two_forwards'])})"
            mode = {"lora": "LoRA"}.get(row["mode"], row["mode"])
            rows.append([title or f"`{row['model']}`", f"{mode}, {row['dtype']}",
                         times(row["ratio_pool_to_two_forwards"]) + reference,
                         " / ".join(f"{whole(row[key]):,}" for key in ("peak_rss_inference_mb", "peak_rss_zo_mb",
                                                                    "peak_rss_backprop_mb")) + " MB"])
    return table(["model", "mode", "pool ZO step / 2 forwards", "peak RSS inference / ZO / backprop"], rows)


def pool_vs_gaussian() -> str:
    losses = load("pool_vs_gaussian.json")["final_test_loss"]

    return " vs ".join(f"{name} {losses[name]['mean']:.3f} ± {losses[name]['std']:.3f}" for name in ("pool", "gaussian"))


def method_differences() -> str:
    """docs/methods.md: every method's official defaults and where zofed differs from its official code, from the
    registry (`AlgorithmEntry.official_defaults`, `.differs`): the same text `zofed list` prints."""
    from zofed.algorithms import METHODS
    from zofed.algorithms.base import official_defaults_text

    groups: list[tuple[list[str], object]] = []  # entries that say the same (FedKSeed and its Pro variant) share one
    for entry in METHODS:
        if groups and (groups[-1][1].official_defaults, groups[-1][1].differs) == (entry.official_defaults, entry.differs):
            groups[-1][0].append(entry.name)
        else:
            groups.append(([entry.name], entry))
    parts = []
    for names, entry in groups:
        head = ", ".join(f"`{name}`" for name in names)
        defaults = (f" Defaults from the official code: {official_defaults_text(entry)}."
                    if entry.official_defaults else "")
        parts.append(f"**{head}**.{defaults}\n" + "\n".join(f"- {line}" for line in entry.differs))
    return "\n\n".join(parts)


BLOCKS = {
    "method-differences": method_differences,
    "quickstart": quickstart,
    "lr-auto": lr_auto,
    "eval-metrics": eval_metrics,
    "gamlpp": gamlpp,
    "client-memory": client_memory,
    "step-smollm2": step("step_smollm2.json"),
    "step-smollm2-avx2": step("step_smollm2_avx2.json"),
    "step-before-after": step_before_after,
    "fedmezo-memory": fedmezo_memory,
    "fedmezo-lr": fedmezo_lr,
    "fedkseed-bytes": fedkseed_bytes,
    "fedspzo": fedspzo,
    "zorba-memory": zorba_memory,
    "zorba-loss": zorba_loss,
    "zorba-family": zorba_family,
    "flower-overhead": flower_overhead,
    "step-bf16-rounding": step_bf16_rounding,
    "quickstart-short": lambda: quickstart(short=True),
    "hardware": hardware,
    "pool-vs-gaussian": pool_vs_gaussian,
}


def render(text: str, document: str = "docs/results.md") -> str:
    """The text with every generated block re-rendered; a block on its own lines stays on its own lines."""
    def replace(match: re.Match) -> str:
        name, body = match.group(1), match.group(2)
        if name not in BLOCKS:
            raise RenderError(f"{document}: unknown generated block '{name}'; use one of {', '.join(BLOCKS)}")
        content = BLOCKS[name]()
        if document == "README.md":  # the README sits at the root: links into the repository lose their '../'
            content = content.replace("](../", "](")
        if body.startswith("\n"):
            content = f"\n{content}\n"
        return f"<!-- generated: {name} -->{content}<!-- end generated -->"
    return BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 with a diff where a document is stale")
    args = parser.parse_args(argv)
    stale = False
    for document in DOCUMENTS:
        path = ROOT / document
        current = path.read_text()
        rendered = render(current, document)
        if rendered == current:
            continue
        if args.check:
            stale = True
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(keepends=True), rendered.splitlines(keepends=True),
                                                       f"{document} (committed)", f"{document} (rendered from JSON)"))
        else:
            path.write_text(rendered)
            print(f"rendered {document}")
    if stale:
        print("\nstale: run .venv/bin/python benchmarks/render_results.py and commit the documents with their JSON")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
