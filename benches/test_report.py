"""report.py builds its HTML from a small synthetic pytest-benchmark JSON: the ratio table's rows, the
targets, and one embedded PNG plot per cost curve (so the report never rots; runs in about a second)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

import report


def _bench(name: str, group: str, median: float, **info: object) -> dict:
    return {"name": name, "group": group, "extra_info": info,
            "stats": {"min": median * 0.9, "max": median * 1.2, "mean": median, "median": median, "rounds": 5}}


SYNTHETIC = {
    "datetime": "2026-12-02T07:00:00", "machine_info": {"cpu": {"brand_raw": "test cpu", "count": 2}, "vm_memory": "reporting <stopped>"},
    "commit_info": {"id": "0123456789abcdef", "dirty": False},
    "benchmarks": [
        # A target met (stat: 1.5 us against 3.6 us, target: 2x faster) and one missed (listdir 3x the kernel).
        _bench("test_stat_ovlcore", "union-stat", 1.5e-6, role="ours"),
        _bench("test_stat_kernel", "union-stat", 3.6e-6, role="baseline"),
        _bench("test_listdir_ovlcore", "union-listdir", 9e-3, role="ours"),
        _bench("test_listdir_kernel", "union-listdir", 3e-3, role="baseline"),
        # A pair without a target in compare.py.
        _bench("test_load_ovlcore", "load", 1.0, role="ours"),
        _bench("test_load_docker", "load", 4.0, role="baseline"),
        # A cost curve with two lines over three points, and one with a single line (a scale group).
        *[_bench(f"test_stat_layers_ovlcore[{n}]", "curve-union-stat", 2e-6 + n * 1e-8, role="curve",
                 curve="curve-union-stat", line="ovlcore", x=n, x_label="layers") for n in (1, 20, 100)],
        *[_bench(f"test_stat_layers_kernel[{n}]", "curve-union-stat", 3e-6 + n * 2e-8, role="curve",
                 curve="curve-union-stat", line="kernel", x=n, x_label="layers") for n in (1, 20, 100)],
        *[_bench(f"test_create[{n}]", "scale-create", 1e-3, role="curve", curve="scale-create", line="ovlcore",
                 x=n, x_label="containers", objects=n) for n in (10, 100)],
    ],
}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp_path = tmp_path_factory.mktemp("report")
    src = tmp_path / "in.json"
    src.write_text(json.dumps(SYNTHETIC))
    assert report.main(["--json", str(src), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "bench.json").read_text()) == SYNTHETIC  # the raw JSON beside it
    return (tmp_path / "out" / "report.html").read_text()


def _rows(page: str, table: str) -> list[str]:
    m = re.search(rf'<table class="{table}">(.*?)</table>', page, re.S)
    assert m, f"no {table} table"
    return re.findall(r"<tr>(.*?)</tr>", m.group(1), re.S)[1:]  # without the header


def test_ratio_table(page: str) -> None:
    rows = _rows(page, "ratios")
    assert len(rows) == 3, rows  # one per (ours, baseline) pair; curve points are not ratios
    stat = next(r for r in rows if "union-stat" in r)
    assert "test_stat_kernel" in stat and "0.42x" in stat and 'class="met"' in stat
    listdir = next(r for r in rows if "union-listdir" in r)
    assert "3.00x" in listdir and 'class="missed"' in listdir
    load = next(r for r in rows if ">load<" in r)
    assert "0.25x" in load and "<td>—</td>" in load


def test_run_conditions(page: str) -> None:
    assert "test cpu, 2 CPUs" in page
    assert "<p>Virtual machine memory: reporting &lt;stopped&gt;.</p>" in page


def test_targets_and_missing(page: str) -> None:
    rows = _rows(page, "targets")
    assert any("union-stat" in r and 'class="met"' in r for r in rows)
    # compare.py's other targets have no benchmarks here: reported missing, not silently dropped.
    assert any("save" in r and "MISSING" in r and 'class="missed"' in r for r in rows)
    assert any("scale-create" in r for r in rows) is False  # no point at 10,000: nothing to check


def test_plots_embedded(page: str) -> None:
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)"', page)
    assert [alt for _, alt in images] == ["curve-union-stat", "scale-create"]
    for data, _ in images:
        png = base64.b64decode(data)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    tables = re.findall(r'<table class="points">(.*?)</table>', page, re.S)
    assert [len(re.findall("<tr>", t)) - 1 for t in tables] == [3, 2]  # a row per x value
    assert "<td></td>" not in tables[0]  # both lines have every x


def test_missing_json_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        report.main(["--json", str(tmp_path / "nope.json"), "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "nope.json: no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
