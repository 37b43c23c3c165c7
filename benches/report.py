"""A self-contained HTML benchmark report: ratios to the baselines, targets, and the cost curves as plots.

    python -m benches.report --out /tmp/bench-report           # run the benchmarks (full size), then report
    python -m benches.report --small --out /tmp/bench-report   # tiny inputs (what CI runs)
    python -m benches.report --json /tmp/bench.json --out DIR  # report an existing pytest-benchmark JSON
    python -m benches.report --out DIR -- -k "curve or union"  # arguments after -- go to pytest

Writes ``DIR/report.html`` (one file: plots embedded as base64 PNG, drawn with matplotlib's Agg backend)
and ``DIR/bench.json`` (the raw pytest-benchmark report). The ratios and targets are compare.py's; the
curves are the benchmarks whose ``extra_info`` names a ``curve`` (see ``_support.curve_point``).
Exit status: pytest's when it failed, else 0 (a missed target is shown in the report, not an error: small
inputs say nothing about targets).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # compare.py, run as ``python -m benches.report``

from compare import Check, Ratio, checks, fmt, load, ratios  # noqa: E402

BENCHES = Path(__file__).resolve().parent

STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.9em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.met { color: #070; font-weight: bold; } .missed { color: #b00; font-weight: bold; }
figure { margin: 1.5em 0; } figcaption { font-size: 0.9em; color: #555; }
"""


def run_suite(json_path: Path, small: bool, pytest_args: list[str]) -> int:
    """Run ``pytest benches`` with ``--benchmark-json``; pytest's exit status."""
    env = dict(os.environ)
    args = [sys.executable, "-m", "pytest", str(BENCHES), "-q", "--benchmark-only", "--benchmark-group-by=group",
            f"--benchmark-json={json_path}"]
    if small:
        env["OVLCORE_BENCH_SMALL"] = "1"
        # Tiny inputs say nothing about speed: few rounds, so the whole suite stays short.
        args += ["--benchmark-max-time=0.05", "--benchmark-min-rounds=3", "--benchmark-warmup=off"]
    return subprocess.run(args + pytest_args, env=env, cwd=BENCHES.parent).returncode


def curves(benchmarks: list[dict]) -> dict[str, dict[str, list[tuple[float, dict]]]]:
    """curve -> line -> [(x, benchmark)] sorted by x, from the benchmarks' ``extra_info``."""
    out: dict[str, dict[str, list[tuple[float, dict]]]] = {}
    for b in benchmarks:
        info = b.get("extra_info", {})
        if "curve" in info and "x" in info:
            out.setdefault(info["curve"], {}).setdefault(info.get("line", b["name"]), []).append((float(info["x"]), b))
    for lines in out.values():
        for points in lines.values():
            points.sort(key=lambda p: p[0])
    return out


def plot(curve: str, lines: dict[str, list[tuple[float, dict]]]) -> str:
    """One curve as an ``<img>`` with a base64 PNG: median per point, bars from the first to the third
    quartile (min to max when the stats have no quartiles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    # The interquartile range as bars: a loaded machine's rare stalls (max) would dwarf microsecond medians.
    quartiles = {line: ([p[1]["stats"].get("q1", p[1]["stats"]["min"]) for p in points],
                        [p[1]["stats"].get("q3", p[1]["stats"]["max"]) for p in points]) for line, points in lines.items()}
    ys = [y for q1, q3 in quartiles.values() for y in q1 + q3]
    xs = [p[0] for points in lines.values() for p in points]
    unit, scale = next(((u, k) for u, k in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)) if max(ys) >= k), ("ns", 1e-9))
    for line, points in lines.items():
        med = [p[1]["stats"]["median"] / scale for p in points]
        q1, q3 = ([q / scale for q in qs] for qs in quartiles[line])
        ax.errorbar([p[0] for p in points], med, yerr=[[m - q for m, q in zip(med, q1)], [q - m for m, q in zip(med, q3)]],
                    marker="o", capsize=3, label=line)
    # Log scales where the values span a decade or more (file counts, store sizes; times growing with them).
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    if min(ys) > 0 and max(ys) / min(ys) >= 10:
        ax.set_yscale("log")
    first = next(iter(lines.values()))[0][1].get("extra_info", {})
    ax.set_xlabel(first.get("x_label", "x"))
    ax.set_ylabel(f"{unit} per call (median; bars: quartiles)")
    ax.set_title(curve)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(curve)}">'


def _status(met: bool | None) -> str:
    if met is None:
        return "<td>—</td>"
    return '<td class="met">met</td>' if met else '<td class="missed">MISSED</td>'


def ratio_table(rows: list[Ratio], benches: dict[str, dict]) -> str:
    out = ['<table class="ratios">', "<tr><th>group</th><th>ours</th><th>baseline</th><th>ours median</th>"
           "<th>baseline median</th><th>ours / baseline (median)</th><th>(mean)</th><th>target</th><th></th></tr>"]
    for r in rows:
        target = f"≤ {r.limit:.3g}x" if r.limit is not None else ""
        out.append(
            f"<tr><td>{html.escape(r.group)}</td><td>{html.escape(r.ours)}</td><td>{html.escape(r.baseline)}</td>"
            f'<td class="num">{fmt(benches[r.ours]["stats"]["median"])}</td>'
            f'<td class="num">{fmt(benches[r.baseline]["stats"]["median"])}</td>'
            f'<td class="num">{r.median:.2f}x</td><td class="num">{r.mean:.2f}x</td><td>{target}</td>{_status(r.met)}</tr>'
        )
    out.append("</table>")
    return "\n".join(out)


def check_table(rows: list[Check]) -> str:
    out = ['<table class="targets">', "<tr><th>target</th><th>measured</th><th></th></tr>"]
    for c in rows:
        out.append(f"<tr><td>{html.escape(c.name)}</td><td>{html.escape(c.text)}</td>{_status(c.met)}</tr>")
    out.append("</table>")
    return "\n".join(out)


def points_table(lines: dict[str, list[tuple[float, dict]]]) -> str:
    xs = sorted({p[0] for points in lines.values() for p in points})
    out = ['<table class="points">', "<tr><th>x</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in lines) + "</tr>"]
    for x in xs:
        cells = []
        for points in lines.values():
            hit = [p[1] for p in points if p[0] == x]
            cells.append(f'<td class="num">{fmt(hit[0]["stats"]["median"])}</td>' if hit else "<td></td>")
        out.append(f'<tr><td class="num">{x:g}</td>{"".join(cells)}</tr>')
    out.append("</table>")
    return "\n".join(out)


def all_table(benchmarks: list[dict]) -> str:
    out = ['<table class="all">', "<tr><th>group</th><th>benchmark</th><th>role</th><th>min</th><th>median</th>"
           "<th>mean</th><th>rounds</th></tr>"]
    for b in sorted(benchmarks, key=lambda b: (b.get("group") or "", b["name"])):
        s = b["stats"]
        out.append(
            f"<tr><td>{html.escape(b.get('group') or '')}</td><td>{html.escape(b['name'])}</td>"
            f"<td>{html.escape(str(b.get('extra_info', {}).get('role', '')))}</td><td class=\"num\">{fmt(s['min'])}</td>"
            f'<td class="num">{fmt(s["median"])}</td><td class="num">{fmt(s["mean"])}</td><td class="num">{s["rounds"]}</td></tr>'
        )
    out.append("</table>")
    return "\n".join(out)


def render(report: dict[str, Any], title: str = "ovlcore benchmarks", note: str = "") -> str:
    """The HTML of a loaded report (:func:`compare.load`), with ``note`` under the title."""
    benchmarks = report["benchmarks"]
    benches = {b["name"]: b for b in benchmarks}
    cpu = report.get("machine_info", {}).get("cpu", {})
    commit = report.get("commit_info", {})
    parts = [
        f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(str(report.get('datetime', '')))}; {html.escape(str(cpu.get('brand_raw', '?')))}, "
        f"{html.escape(str(cpu.get('count', '?')))} CPUs; commit {html.escape(str(commit.get('id', '?'))[:12])}"
        f"{' (dirty)' if commit.get('dirty') else ''}. Ratios are ours / baseline, in one run: below 1 is faster.</p>",
        f"<p>Virtual machine memory: {html.escape(str(vm))}.</p>" if (vm := report.get("machine_info", {}).get("vm_memory")) else "",
        f"<p><strong>{html.escape(note)}</strong></p>" if note else "",
        "<h2>Ours against the baselines</h2>",
        ratio_table(ratios(benchmarks), benches),
        "<h2>Targets</h2>",
        check_table(checks(benches)),
        "<h2>Cost curves</h2>",
    ]
    found = curves(benchmarks)
    if not found:
        parts.append("<p>No cost-curve benchmarks in this report.</p>")
    for curve, lines in found.items():
        parts.append(f"<figure>{plot(curve, lines)}<figcaption>{html.escape(curve)}</figcaption></figure>")
        parts.append(points_table(lines))
    parts += ["<h2>All benchmarks</h2>", all_table(benchmarks), "</body></html>"]
    return "\n".join(parts)


def write_report(json_path: Path, out: Path, note: str = "") -> Path:
    """Render ``json_path`` into ``out/report.html`` (with the JSON copied to ``out/bench.json``)."""
    out.mkdir(parents=True, exist_ok=True)
    if json_path.resolve() != (out / "bench.json").resolve():
        shutil.copyfile(json_path, out / "bench.json")
    page = out / "report.html"
    page.write_text(render(load(str(json_path)), note=note), encoding="utf-8")
    return page


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pytest_args: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, pytest_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="python -m benches.report", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-report"), help="directory for report.html and bench.json")
    p.add_argument("--json", type=Path, help="report this pytest-benchmark JSON instead of running the benchmarks")
    p.add_argument("--small", action="store_true", help="run the benchmarks on tiny inputs (OVLCORE_BENCH_SMALL=1)")
    args = p.parse_args(argv)
    if args.json is not None and not args.json.is_file():
        p.error(f"{args.json}: no such file")
    status = 0
    json_path = args.json
    if json_path is None:
        args.out.mkdir(parents=True, exist_ok=True)
        json_path = args.out / "bench.json"
        status = run_suite(json_path, args.small, pytest_args)
        if not json_path.exists():
            print(f"benches.report: pytest wrote no {json_path} (exit {status})", file=sys.stderr)
            return status or 1
    note = "Tiny inputs (--small): this run checks that the benchmarks work; its figures say nothing about speed." if args.small else ""
    page = write_report(json_path, args.out, note)
    print(f"benches.report: wrote {page} and {args.out / 'bench.json'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
