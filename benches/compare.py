"""Ratios of ovlcore to its baselines, from a pytest-benchmark JSON report, checked against the targets.

    pytest benches --benchmark-only --benchmark-json=/tmp/bench.json
    python benches/compare.py /tmp/bench.json

Exit status 1 when a target is missed (or its benchmarks are missing from the report).
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass

#: (group, ours, baseline, the largest acceptable ratio of ours to the baseline, by mean and median)
TARGETS = [
    ("layer-apply", "test_apply_ovlcore", "test_apply_tar_x", 1.0),
    ("layer-apply", "test_apply_ovlcore", "test_apply_tar_x_sync", 1.0),
    ("union-stat", "test_stat_ovlcore", "test_stat_kernel", 0.5),
    ("union-listdir", "test_listdir_ovlcore", "test_listdir_kernel", 0.5),
    ("diff-docker", "test_diff_ovlcore_vs_docker", "test_diff_docker_vs_docker", 0.1),
    ("commit-docker", "test_commit_ovlcore_vs_docker", "test_commit_docker_vs_docker", 1 / 15),
    ("save", "test_save_ovlcore", "test_save_docker", 1 / 15),
    ("export-docker", "test_export_path_ovlcore", "test_export_docker", 1 / 6),
    ("cp out", "test_cp_out_ovlcore", "test_cp_out_docker", 1 / 5),
    ("layer-tar-plain", "test_layer_tar_ovlcore[None]", "test_layer_tar_gnu_tar[cat-plain]", 1.0),
    ("registry-push", "test_push_ovlcore", "test_push_docker", 0.5),
    ("registry-push", "test_push_ovlcore", "test_push_skopeo", 1 / 1.5),
    ("registry-pull", "test_pull_ovlcore", "test_pull_docker", 0.5),
    ("registry-pull", "test_pull_ovlcore", "test_pull_podman", 1 / 1.5),
    ("build-uncached", "test_build_uncached_ovlcore", "test_build_uncached_docker", 0.5),
    ("build-uncached", "test_build_uncached_ovlcore", "test_build_uncached_buildah", 0.5),
    ("build-rebuild", "test_build_rebuild_ovlcore", "test_build_rebuild_docker", 0.1),
]

#: Peak memory (bench_registry.py, bench_save_load.py): (test, the largest acceptable peak RSS in bytes, from extra_info).
MEMORY_TARGETS = [
    ("test_peak_rss[push]", 150 << 20),
    ("test_peak_rss[push-zstd]", 150 << 20),
    ("test_peak_rss[pull]", 150 << 20),
    ("test_peak_rss[save]", 150 << 20),
    ("test_peak_rss[load]", 150 << 20),
    ("test_peak_rss[export]", 150 << 20),
    ("test_peak_rss[commit]", 150 << 20),
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


@dataclass
class Ratio:
    """ours / a baseline of the same group (``limit``: the target of :data:`TARGETS`, if any)."""

    group: str
    ours: str
    baseline: str
    mean: float
    median: float
    limit: float | None = None

    @property
    def met(self) -> bool | None:
        return None if self.limit is None else self.mean <= self.limit and self.median <= self.limit


@dataclass
class Check:
    """One target of :data:`TARGETS`, :data:`SCALE_TARGETS` or :data:`MEMORY_TARGETS`: what, the figure
    measured against the limit, and whether it was met (``False`` also when its benchmarks are missing)."""

    name: str
    text: str
    met: bool


def load(path: str) -> dict:
    """A pytest-benchmark JSON report, round items merged into their series (:func:`merge_series`)."""
    with open(path) as f:
        report = json.load(f)
    report["benchmarks"] = merge_series(report["benchmarks"])
    return report


def by_group(benchmarks: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for b in benchmarks:
        groups.setdefault(b["group"] or "", []).append(b)
    return groups


def ratios(benchmarks: list[dict]) -> list[Ratio]:
    """ours / each baseline, group by group (the first ``role == "ours"`` entry of a group is ours), with
    the target of that pair when :data:`TARGETS` has one."""
    limits = {(g, o, b): limit for g, o, b, limit in TARGETS}
    out = []
    for group, items in by_group(benchmarks).items():
        ours = [b for b in items if b.get("extra_info", {}).get("role") == "ours"]
        if not ours:
            continue
        o = ours[0]
        for b in items:
            if b.get("extra_info", {}).get("role") == "baseline":
                out.append(Ratio(group, o["name"], b["name"], o["stats"]["mean"] / b["stats"]["mean"],
                                 o["stats"]["median"] / b["stats"]["median"], limits.get((group, o["name"], b["name"]))))
    return out


def checks(benches: dict[str, dict]) -> list[Check]:
    """Every target, checked (see :class:`Check`)."""
    out = []
    for group, ours, base, limit in TARGETS:
        if ours not in benches or base not in benches:
            out.append(Check(group, f"MISSING ({ours} or {base} not in the report)", False))
            continue
        o, b = benches[ours]["stats"], benches[base]["stats"]
        rm, rmed = o["mean"] / b["mean"], o["median"] / b["median"]
        out.append(Check(group, f"{ours} / {base} = {rm:.2f}x (mean), {rmed:.2f}x (median); target <= {limit:g}x",
                         rm <= limit and rmed <= limit))
    return out + scale(benches) + memory(benches)


def main(path: str) -> int:
    report = load(path)
    benches = {b["name"]: b for b in report["benchmarks"]}
    print(f"machine: {report.get('machine_info', {}).get('cpu', {}).get('brand_raw', '?')}, "
          f"{report.get('machine_info', {}).get('cpu', {}).get('count', '?')} CPUs; {report.get('datetime', '')}; "
          f"VM memory: {report.get('machine_info', {}).get('vm_memory', '?')}")
    for group, items in by_group(report["benchmarks"]).items():
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
    for group, test, _limits, _flat in SCALE_TARGETS:
        if curve := scale_curve(benches, test):
            print(f"\n  {group} (median by objects): " + ", ".join(f"{n:,}: {fmt(t)}" for n, t in sorted(curve.items())))
    print("\ntargets:")
    results = checks(benches)
    for c in results:
        print(f"  {c.name}: {c.text}" + ("" if c.text.startswith("MISSING") else f": {'met' if c.met else 'MISSED'}"))
    return 1 if any(not c.met for c in results) else 0


def memory(benches: dict[str, dict]) -> list[Check]:
    """Check each peak-RSS figure a benchmark recorded (a missing one counts as missed)."""
    out = []
    for test, limit in MEMORY_TARGETS:
        peak = benches.get(test, {}).get("extra_info", {}).get("peak_rss_bytes")
        if peak is None:
            out.append(Check(test, "MISSING (no peak_rss_bytes in the report)", False))
            continue
        out.append(Check(test, f"peak RSS {peak / (1 << 20):.1f} MiB, target < {limit / (1 << 20):.0f} MiB", peak < limit))
    return out


def scale_curve(benches: dict[str, dict], test: str) -> dict[int, float]:
    """Median by number of objects of a scale benchmark (``test[N]`` items)."""
    return {int(b["extra_info"]["objects"]): b["stats"]["median"] for b in benches.values() if b["name"].startswith(test + "[")}


def scale(benches: dict[str, dict]) -> list[Check]:
    """Check the targets of each scale curve present in the report."""
    out = []
    for group, test, limits, flat in SCALE_TARGETS:
        curve = scale_curve(benches, test)
        for n, limit in limits:
            if n in curve:
                out.append(Check(group, f"{test} at {n:,}: {fmt(curve[n])}, target < {fmt(limit)}", curve[n] <= limit))
        for lo, hi, ratio in flat:
            if lo in curve and hi in curve:
                r = curve[hi] / curve[lo]
                out.append(Check(group, f"{test} {hi:,} / {lo:,}: {r:.2f}x, target <= {ratio}x", r <= ratio))
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
