"""The tidy metric rows round-trip through metrics.json and metrics.csv; broken files are clear errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from conceptspace.results import metric_row, read_metrics, write_metrics


def test_rows_round_trip_with_missing_cis_and_extra_columns(tmp_path: Path) -> None:
    rows = [
        metric_row("a red circle", "base", "vendi", 3.5, 3.1, 3.9, 64, embedder="testbed"),
        metric_row(
            'a, "quoted"\nprompt', "hybrid", "commitment", 0.7, n=1, step=0, timestep=999, model="base"
        ),
    ]
    json_path, csv_path = write_metrics(tmp_path, rows)
    back = read_metrics(tmp_path)
    assert back[0] == rows[0]
    assert math.isnan(back[1]["ci_low"]) and math.isnan(back[1]["ci_high"])
    assert back[1]["prompt"] == 'a, "quoted"\nprompt' and back[1]["timestep"] == 999
    table = list(csv.DictReader(csv_path.open(newline="")))
    assert list(table[0])[:7] == ["prompt", "regime", "metric", "value", "ci_low", "ci_high", "n"]
    assert table[1]["prompt"] == 'a, "quoted"\nprompt' and table[0]["step"] == ""
    assert "NaN" not in json_path.read_text()  # strict JSON: missing values are null


def test_bad_metrics_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="conceptspace diversity"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text('[{"prompt": "x"')
    with pytest.raises(ValueError, match="not valid JSON"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text('[{"prompt": "x", "regime": "base", "metric": "m"}]')
    with pytest.raises(ValueError, match="lacks value, ci_low, ci_high, n"):
        read_metrics(tmp_path)
    with pytest.raises(ValueError, match="value is not a number"):
        write_metrics(tmp_path, [metric_row("p", "r", "m", 1.0) | {"value": "high"}])


def test_p_values_print_alike_everywhere():
    from conceptspace.results import format_p_value

    # 1 / (1000 + 1) is the smallest p of a 1000-permutation test: "< 0.001", never "0.000999"
    assert [format_p_value(p) for p in (1 / 1001, 0.0123, 0.5, 1.0)] == ["< 0.001", "0.012", "0.500", "1.000"]
    assert format_p_value(None) == format_p_value(float("nan")) == "—"
    assert format_p_value(1 / 1001, named=True) == "p < 0.001"
    assert format_p_value(0.0456, named=True) == "p = 0.046"
