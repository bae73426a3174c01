"""docs/performance.md's step-cost tables are what experiments/bench_step_cost.py generates from the committed
JSON files (so a typed-in number cannot drift from its measurement), and the default's cost over a run is
the tune_fraction mix of its two measured steps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

import bench_step_cost as bench  # noqa: E402


@pytest.mark.parametrize("stem", ["bench_step_cost_cpu", "bench_step_cost_cheap_cpu"])
def test_the_doc_holds_the_tables_generated_from_the_committed_json(stem: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "docs" / "perf").mkdir(parents=True)
    # as the doc's command names them
    doc, json_path = Path("docs/performance.md"), Path(f"docs/perf/{stem}.json")
    (tmp_path / doc).write_text((REPO / doc).read_text())
    (tmp_path / json_path).write_text((REPO / json_path).read_text())
    monkeypatch.chdir(tmp_path)
    bench.update_doc(doc, json_path, bench.markdown_tables(json.loads(json_path.read_text())))
    assert doc.read_text() == (REPO / "docs" / "performance.md").read_text()


def test_the_default_costs_the_tune_fraction_mix_of_its_two_steps() -> None:
    row = {"methods": {"rthpo[every10,quarter]": {"ratio_to_unit": 1.4, "ratio_to_sgd": 1.4},
                       "rthpo[after_tuning]": {"ratio_to_unit": 1.0, "ratio_to_sgd": 1.0}}}
    lines = bench.default_cost_table({"models": {"mlp": row}})
    assert lines[2] == "| mlp | sgd | 1.40x | 1.00x | 1.10x | met |" and len(lines) == 3
