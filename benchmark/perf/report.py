"""perf.md: one table per measure, with the goal, whether it was met, and the device."""
from __future__ import annotations

import json


def _ms(s: dict | None) -> str:
    return f"{s['median_ms']:.1f} / {s['min_ms']:.1f}" if s else "-"


def _ratio(r: dict | None) -> str:
    return f"{r['median']:.3f} / {r['min']:.3f}" if r else "-"


def _met(flag) -> str:
    return {True: "**met**", False: "**not met**", None: "-"}[flag]


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _unavailable(res: dict) -> list[str] | None:
    if "skipped" in res:
        return [f"Skipped: {res['skipped']}", ""]
    if "error" in res:
        return [f"Failed: `{res['error']}`", ""]
    return None


def p1(res: dict) -> list[str]:
    lines = [f"Scale {res['scale']}, batch {res['batch']}, {res['precision']}, data {res['data']} in memory; "
             f"{res['repeats']} interleaved rounds of {res['steps_per_call']} steps per side.", ""]
    lines += _table(["loop", "ms/step median / min"],
                    [["maskbench (benchmark.train step)", _ms(res["maskbench"])],
                     ["open_clip_train.train.train_one_epoch", _ms(res["open_clip_train"])]])
    lines += ["", f"Ratio maskbench / open_clip (median / min): **{_ratio(res['ratio'])}**. Goal {res['goal']}: "
              f"{_met(res['met'])}.", "", res.get("notes", ""), ""]
    return lines


def p2(res: dict) -> list[str]:
    lines = []
    for c in res["configs"]:
        lines += [f"**{c['name']}**: {c['model']}, batch {c['batch']}, {c['repeats']} rounds; CLIP step "
                  f"{_ms(c['clip_step'])} ms (median / min), {c['clip_gflop']} GFLOP.", ""]
        lines += _table(["method", "ms/step median / min", "time ratio to CLIP (median / min)", "FLOP ratio",
                         "gap (median time / FLOPs - 1)", "goal"],
                        [[r["method"], _ms(r["step"]), _ratio(r["time_ratio"]), f"{r['flop_ratio']:.3f}",
                          f"{r['gap']:+.1%}", _met(r["met"])] for r in c["rows"]])
        if c.get("fit"):
            f = c["fit"]
            lines += ["", f"Linear fit of the medians, time = fixed + rate x FLOPs: fixed {f['fixed_ms']:.0f} ms "
                          f"({f['fixed_share_of_clip_step']:.0%} of the CLIP step), {f['ms_per_gflop']:.1f} ms/GFLOP."]
        lines.append("")
    lines += [f"Goal: {res['goal']}. Met in at least one configuration: {_met(res['met'])}.", ""]
    if res.get("explanation"):
        lines += [res["explanation"], ""]
    return lines


def p3(res: dict) -> list[str]:
    lines = [f"Scale {res['scale']}, batch {res['batch']}, {res['repeats']} interleaved rounds over all methods.", ""]
    lines += _table(["method", "ms/step median / min", "time vs CLIP (median / min)", "GFLOP/step",
                     "FLOPs vs CLIP", "mask ratio"],
                    [[r["method"], _ms(r["step"]), _ratio(r["time_vs_clip"]), r["gflop"], f"{r['flops_vs_clip']:.3f}",
                      "-" if r.get("mask_ratio") is None else f"{r['mask_ratio']:.2f}"] for r in res["rows"]])
    sel = [r for r in res["rows"] if "selection" in r]
    if sel:
        lines += ["", "Selection overhead (timed alone, from inputs the step computes anyway):", ""]
        lines += _table(["method", "selection", "ms median / min", "fraction of the step (median / min)", "goal"],
                        [[r["method"], r["selection"]["what"],
                          f"{r['selection']['median_ms']:.2f} / {r['selection']['min_ms']:.2f}",
                          _ratio(r["selection"]["fraction_of_step"]), _met(r["selection"]["met"])] for r in sel])
    if res.get("errors"):
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in res["errors"].items())]
    return lines + [""]


def _flat(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        elif not isinstance(v, list) and k != "traceback":
            out.append((f"{prefix}{k}", v))
    return out


def p4(res: dict) -> list[str]:
    bad = _unavailable(res)
    if bad:
        return bad + [f"Goal: {res.get('goal')}.", ""]
    if "markdown" in res:          # P4 (perf/evaluation.py) renders its own tables
        return [res["markdown"], "", f"Goal: {res['goal']}: {_met(res.get('met'))}.", ""]
    return _table(["figure", "value"], [[k, v] for k, v in _flat(res)]) + [""]


def p5(res: dict) -> list[str]:
    lines = _p5_once(res, goal=True)
    if res.get("one_seed"):
        lines += ["One seed:", ""] + _p5_once(res["one_seed"], goal=False)
    return lines


def _p5_once(res: dict, goal: bool) -> list[str]:
    verdict = f" (goal <= {res['goal_s']} s: {_met(res['met'])})" if goal else ""
    lines = [f"`{res['command']}`: exit {res['exit_status']}, **{res['total_s']:.0f} s** in all{verdict}; "
             f"at most {res.get('side_by_side', 1)} run(s) side by side (the phase figures are sums over runs).", ""]
    if res.get("stderr_tail"):
        lines += ["```", *res["stderr_tail"], "```", ""]
    ph, tot = res.get("phases", {}), res.get("totals", {})
    rows = [["data generation (embedded shards and eval sets)", ph.get("data_s", "-")],
            ["training steps (sum over runs)", tot.get("train_s", "-")],
            ["evaluation (sum over runs)", tot.get("eval_s", "-")],
            ["run overhead (data load/decode, FLOP counting, periodic probes, checkpoints, export)",
             tot.get("run_overhead_s", "-")],
            ["worker start-up (sweep start to each worker's first run)", tot.get("process_startup_s", "-")],
            ["report", ph.get("report_s", "-")]]
    if "other_s" in tot:
        rows.append(["other (interpreter start, summary)", tot["other_s"]])
    lines += _table(["phase", "seconds"], rows) + [""]
    if res.get("runs"):
        lines += _table(["run", "seed", "steps", "ms/step", "train s", "eval s", "overhead s", "run s",
                         "periodic evals"],
                        [[r["method"], r["seed"], r["steps"], r["ms_per_step"], r["train_s"], r["eval_s"],
                          r["overhead_s"], r["run_s"], r["periodic_evals"]] for r in res["runs"]]) + [""]
    return lines


def p6(res: dict) -> list[str]:
    lines = [res["method"] + f", scale {res['scale']}.", ""]
    has_cuda = any("cuda_max_allocated_mib" in r for r in res["rows"])
    header = ["method", "params (M)", "RSS with torch + data (MiB)", "peak: model + FLOP count (MiB)",
              "peak: training steps (MiB)", "steps above baseline (MiB)", "process peak (MiB)"]
    lines += _table(header + (["CUDA max allocated (MiB)"] if has_cuda else []),
                    [[r["method"], r["params_m"], r["rss_before_model_mib"], r.get("flop_count_peak_mib", "-"),
                      r["peak_rss_mib"], r["model_and_step_mib"], r.get("process_peak_mib", "-")]
                     + ([r.get("cuda_max_allocated_mib", "-")] if has_cuda else [])
                     for r in res["rows"]])
    if res.get("errors"):
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in res["errors"].items())]
    return lines + [""]


def p7(res: dict) -> list[str]:
    bad = _unavailable(res)
    if bad:
        return bad
    lines = [f"Device: {res['device']}.", ""]
    for key, title, fn in (("p1", "P1 on the GPU", p1), ("p2", "P2 on the GPU", p2), ("p3", "P3 on the GPU", p3)):
        if key in res:
            lines += [f"**{title}**", ""] + (_unavailable(res[key]) or fn(res[key]))
    m = res.get("mfu")
    if m:
        lines += ["**MFU, ViT-B/16 CLIP step**", ""] + (_unavailable(m) or _table(
            ["device", "batch", "precision", "ms/step median / min", "TFLOP/step", "achieved TFLOP/s",
             "peak bf16 TFLOP/s", "MFU (median / best)", "goal"],
            [[m["device"], m["batch"], m["precision"], _ms(m["step"]), m["tflop_per_step"], m["achieved_tflops"],
              m["peak_bf16_tflops"], f"{m['mfu']:.1%} / {m['mfu_best']:.1%}" if m.get("mfu") else "-",
              _met(m.get("met"))]])) + [""]
    return lines


TITLES = {"p1": ("P1 trainer speed", p1), "p2": ("P2 masking efficiency", p2), "p3": ("P3 method overheads", p3),
          "p4": ("P4 evaluation", p4), "p5": ("P5 end to end", p5), "p6": ("P6 peak memory", p6),
          "p7": ("P7 GPU", p7)}


def render(report: dict) -> str:
    d = report["device"]
    lines = ["# maskbench performance", "",
             f"Device: {d['cpu']} ({d['cpu_cores']} cores), torch {d['torch']} with {d['torch_threads']} threads"
             + (f" (OMP_NUM_THREADS={d['omp_num_threads']})" if d.get("omp_num_threads") else "")
             + (f", GPU {d['gpu']}" if d.get("gpu") else ", no GPU") + f"; measured on `{d['device']}`.",
             f"Load average at start / end: {report.get('load_start', '-')} / {report.get('load_end', '-')}. "
             "Other processes shared these cores while measuring: every comparison is interleaved round-robin in "
             "one process, and both medians and minimums are given (median / min).",
             f"Command: `{report['command']}`; {report['elapsed_s']:.0f} s (measures from earlier runs into the same "
             "folder are kept; each says when it was measured and with how many torch threads).", ""]
    for key, res in report["measures"].items():
        title, fn = TITLES[key]
        lines += [f"## {title}", ""]
        bad = _unavailable(res) if key not in ("p4", "p7") else None
        try:
            lines += bad or fn(res)
        except (KeyError, TypeError) as e:             # a result this renderer does not know: show it raw
            lines += [f"(raw result; rendering failed: {e})", "```json", json.dumps(res, indent=1), "```", ""]
        if res.get("seconds") is not None:
            lines += [f"_{res['seconds']:.0f} s to measure"
                      + (f", at {res['measured_at']}" if res.get("measured_at") else "")
                      + (f", torch threads {res['threads_used']}" if res.get("threads_used") else "") + "._", ""]
    return "\n".join(lines).rstrip() + "\n"
