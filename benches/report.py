#!/usr/bin/env python3
"""Collects the benchmark results of one run and renders the report.

Inputs (one run, all in the same target directory):
  <target>/criterion/<workload>/<impl>[/<param>]/new/{estimates,sample}.json
      criterion benches (benches/tree.rs)
  <results>/bulk.jsonl, memory.jsonl, layer.jsonl, go.jsonl, meta.json
      benches/bulk.rs, benches/memory.rs, benches/layer.rs, benches/go
      (run.sh), benches/run.sh

Outputs:
  docs/bench/results.json     every row, merged
  docs/bench/<workload>.svg   one bar chart per workload row
  docs/BENCHMARKS.md          the part between the `results:begin/end`
                              markers is replaced by the generated table

Standard library only. Usage: benches/report.py [--target DIR] [--results DIR]
"""

import argparse
import html
import json
import os
import re
import sys
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
    ("W8_wake_many", "ns", "L_tokio_wake_1000"),
    ("W9_memory/bytes", "heap B/child", None),
    ("W9_memory/allocs", "allocs/child", None),
    ("W9_memory/handle_bytes", "inline B/child", None),
    ("W10_timeout_cancel", "ns/op", None),
    ("W11_value_depth/1", "ns/lookup", None),
    ("W11_value_depth/10", "ns/lookup", None),
    ("W11_value_depth/100", "ns/lookup", None),
    ("W11_value_depth/1000", "ns/lookup", None),
]

LIMITS = ["L_atomic_load", "L_alloc_1cas", "L_alloc_3cas", "L_park_unpark", "L_tokio_wake_1000"]

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
    for name in ["bulk", "memory", "layer", "go"]:
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
        if r["workload"] in ("W7_wake_latency", "L_park_unpark") and "p99" in r:
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
    """(row, description, passed or None) for every target of issue #4."""
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
    t("W8_wake_many", "≤ 1.3× bare tokio wake of 1,000 tasks", c("W8_wake_many"),
      1.3 * (lim("L_tokio_wake_1000") or float("nan")))
    t("W9_memory/bytes", "≤ 64 B per live child", c("W9_memory/bytes"), 64)
    t("W9_memory/allocs", "1 allocation per live child", c("W9_memory/allocs"), 1)
    w2 = c("W2_child_cancel")
    t("W10_timeout_cancel", "≤ 3× W2", c("W10_timeout_cancel"), None if w2 is None else 3 * w2)
    t("W11_value_depth/100", "≤ 10 ns at 100 layers", c("W11_value_depth/100"), 10)
    v1 = c("W11_value_depth/1")
    t("W11_value_depth/1000", "independent of layers (1000 ≤ 1.25× 1 layer)", c("W11_value_depth/1000"),
      None if v1 is None else 1.25 * v1)
    return out


# benches/layer.rs (issue 13 §2): rows in table order, and its columns.
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
    out = ["### Per-request cost of the server layer (issue 13 §2), from this run", "",
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default=os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target")))
    ap.add_argument("--results", default=None)
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    args = ap.parse_args()
    target = Path(args.target)
    results = Path(args.results) if args.results else target / "ctxtree-bench"
    docs = Path(args.docs)
    (docs / "bench").mkdir(parents=True, exist_ok=True)

    rows = load_criterion(target) + load_jsonl(results)
    meta = {}
    if (results / "meta.json").exists():
        meta = json.loads((results / "meta.json").read_text())
    index = {(r["workload"], r["impl"]): r for r in rows}
    get = lambda w, i: index.get((w, i))  # noqa: E731

    (docs / "bench" / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")

    lines = []
    q = meta.get("quick")
    if q:
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
    def with_unit(v):
        t = fmt(v)
        return t if t.endswith("µs") else t + " ns"

    lines.append("Limits on their own: " + ", ".join(
        f"{lim_name} {with_unit(get(lim_name, 'limit')['median'])}"
        for lim_name in LIMITS if get(lim_name, "limit")) + ".")
    lines.append("")
    lines.append("### Targets (issue #4), from this run")
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
    lines.append("### Charts")
    lines.append("")
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
    generated = "\n".join(lines)

    md = docs / "BENCHMARKS.md"
    text = md.read_text() if md.exists() else "# Benchmarks\n\n<!-- results:begin -->\n<!-- results:end -->\n"
    new, n = re.subn(r"(<!-- results:begin -->\n).*?(<!-- results:end -->)",
                     lambda m: m.group(1) + generated + "\n" + m.group(2), text, flags=re.S)
    if n == 0:
        new = text + "\n<!-- results:begin -->\n" + generated + "\n<!-- results:end -->\n"
    md.write_text(new)
    print(generated)


if __name__ == "__main__":
    sys.exit(main())
