"""Ratios of ovlcore to its baselines, from a pytest-benchmark JSON report, checked against the targets.

    pytest benches --benchmark-only --benchmark-json=/tmp/bench.json
    python benches/compare.py /tmp/bench.json

Exit status 1 when a target is missed (or its benchmarks are missing from the report).
"""

from __future__ import annotations

import json
import statistics
import sys

#: (group, ours, baseline, the largest acceptable ratio of ours to the baseline, by mean and median)
TARGETS = [
    ("layer-apply", "test_apply_ovlcore", "test_apply_tar_x", 1.0),
    ("union-stat", "test_stat_ovlcore", "test_stat_kernel", 2.0),
    ("union-listdir", "test_listdir_ovlcore", "test_listdir_kernel", 2.0),
    ("save", "test_save_ovlcore", "test_save_docker", 0.25),
    ("export-docker", "test_export_path_ovlcore", "test_export_docker", 1 / 3),
    ("layer-tar-plain", "test_layer_tar_ovlcore[None]", "test_layer_tar_gnu_tar[cat-plain]", 1.0),
    ("registry-push", "test_push_ovlcore", "test_push_docker", 0.5),
    ("registry-push", "test_push_ovlcore", "test_push_skopeo", 1 / 1.5),
    ("registry-pull", "test_pull_ovlcore", "test_pull_docker", 0.5),
    ("registry-pull", "test_pull_ovlcore", "test_pull_podman", 1 / 1.5),
    ("build-uncached", "test_build_uncached_ovlcore", "test_build_uncached_docker", 0.5),
    ("build-uncached", "test_build_uncached_ovlcore", "test_build_uncached_buildah", 0.5),
    ("build-rebuild", "test_build_rebuild_ovlcore", "test_build_rebuild_docker", 0.1),
]

#: Peak memory (bench_registry.py): (test, the largest acceptable peak RSS in bytes, from extra_info).
MEMORY_TARGETS = [
    ("test_peak_rss[push]", 150 << 20),
    ("test_peak_rss[push-zstd]", 150 << 20),
    ("test_peak_rss[pull]", 150 << 20),
]


#: Scale curves (bench_scale.py): (group, test, [(objects, the largest acceptable median in seconds)],
#: [(smaller size, larger size, the largest acceptable ratio of their medians)]).
SCALE_TARGETS = [
    ("scale-create", "test_create", [(10000, 0.008)], [(100, 10000, 1.3)]),
    ("scale-get-name", "test_get_by_name", [(10000, 0.0005)], []),
    ("scale-get-prefix", "test_get_by_id_prefix", [(10000, 0.0005)], []),
    ("scale-list", "test_list", [(10000, 0.1)], []),
    ("scale-commit", "test_commit_one_file", [(1000, 0.015)], [(10, 1000, 1.3)]),
    ("scale-images-get", "test_image_by_id_prefix", [(10000, 0.001)], []),
]


def fmt(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def merge_series(benchmarks: list[dict]) -> list[dict]:
    """Benchmarks run as one item per round (``extra_info["series"]``, bench_registry.py: contenders
    alternated round by round) become one entry per series, named after it, whose stats are over its
    items' single timings."""
    out: list[dict] = []
    series: dict[str, list[dict]] = {}
    for b in benchmarks:
        name = b.get("extra_info", {}).get("series")
        if name:
            if name not in series:
                series[name] = []
                out.append({"name": name, "group": b["group"], "extra_info": dict(b["extra_info"]), "stats": {}})
            series[name].append(b)
        else:
            out.append(b)
    for b in out:
        items = series.get(b["name"]) if not b["stats"] else None
        if items:
            times = sorted(t for i in items for t in i["stats"].get("data") or [i["stats"]["median"]])
            b["stats"] = {"min": times[0], "mean": statistics.fmean(times), "median": statistics.median(times),
                          "max": times[-1], "rounds": len(times), "data": times}
            b["extra_info"].pop("round", None)
    return out


def main(path: str) -> int:
    with open(path) as f:
        report = json.load(f)
    report["benchmarks"] = merge_series(report["benchmarks"])
    benches = {b["name"]: b for b in report["benchmarks"]}
    groups: dict[str, list[dict]] = {}
    for b in report["benchmarks"]:
        groups.setdefault(b["group"] or "", []).append(b)
    print(f"machine: {report.get('machine_info', {}).get('cpu', {}).get('brand_raw', '?')}, "
          f"{report.get('machine_info', {}).get('cpu', {}).get('count', '?')} CPUs; {report.get('datetime', '')}")
    for group, items in groups.items():
        ours = [b for b in items if b.get("extra_info", {}).get("role") == "ours"]
        print(f"\n[{group}]")
        for b in sorted(items, key=lambda b: b["stats"]["median"]):
            s = b["stats"]
            line = f"  {b['name']:<42} mean {fmt(s['mean']):>10}  median {fmt(s['median']):>10}  rounds {s['rounds']:>7}"
            o = ours[0]["stats"] if ours else None
            role = b.get("extra_info", {}).get("role")
            if o and role == "baseline":
                line += f"   ours/this: mean {o['mean'] / s['mean']:.2f}x median {o['median'] / s['median']:.2f}x"
            elif o and role == "info":
                line += f"   this/ours: mean {s['mean'] / o['mean']:.3g}x median {s['median'] / o['median']:.3g}x"
            print(line)
    failed = 0
    print("\ntargets:")
    for group, ours, base, limit in TARGETS:
        if ours not in benches or base not in benches:
            print(f"  {group}: MISSING ({ours} or {base} not in the report)")
            failed += 1
            continue
        o, b = benches[ours]["stats"], benches[base]["stats"]
        rm, rmed = o["mean"] / b["mean"], o["median"] / b["median"]
        ok = rm <= limit and rmed <= limit
        failed += not ok
        print(f"  {group}: {ours} / {base} = {rm:.2f}x (mean), {rmed:.2f}x (median); target <= {limit:g}x: "
              f"{'met' if ok else 'MISSED'}")
    failed += scale(benches)
    failed += memory(benches)
    return 1 if failed else 0


def memory(benches: dict[str, dict]) -> int:
    """Check each peak-RSS figure a benchmark recorded; returns the misses (a missing one counts)."""
    failed = 0
    for test, limit in MEMORY_TARGETS:
        peak = benches.get(test, {}).get("extra_info", {}).get("peak_rss_bytes")
        if peak is None:
            print(f"  {test}: MISSING (no peak_rss_bytes in the report)")
            failed += 1
            continue
        ok = peak < limit
        failed += not ok
        print(f"  {test}: peak RSS {peak / (1 << 20):.1f} MiB, target < {limit / (1 << 20):.0f} MiB: {'met' if ok else 'MISSED'}")
    return failed


def scale(benches: dict[str, dict]) -> int:
    """Print each scale curve (median by number of objects) and check its targets; returns the misses."""
    failed = 0
    for group, test, limits, flat in SCALE_TARGETS:
        curve = {int(b["extra_info"]["objects"]): b["stats"]["median"] for b in benches.values() if b["name"].startswith(test + "[")}
        if not curve:
            continue
        print(f"\n  {group} (median by objects): " + ", ".join(f"{n:,}: {fmt(t)}" for n, t in sorted(curve.items())))
        for n, limit in limits:
            if n in curve:
                ok = curve[n] <= limit
                failed += not ok
                print(f"    at {n:,}: {fmt(curve[n])}, target < {fmt(limit)}: {'met' if ok else 'MISSED'}")
        for lo, hi, ratio in flat:
            if lo in curve and hi in curve:
                r = curve[hi] / curve[lo]
                failed += r > ratio
                print(f"    {hi:,} / {lo:,}: {r:.2f}x, target <= {ratio}x: {'met' if r <= ratio else 'MISSED'}")
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
