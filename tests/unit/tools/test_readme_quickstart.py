"""tools/readme_quickstart.py: the README's quickstart table comes from report.json, replaces only
its own block, and --check catches a hand edit."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
spec = importlib.util.spec_from_file_location("readme_quickstart",
                                              ROOT / "tools" / "readme_quickstart.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)

REPORT = {"context": {"manifest": "abc123", "seeds": [0], "machine": "Test CPU, 2 cores",
                      "scratch budget": "From-scratch networks: 4 epochs."},
          "results": {
              "simsiam + la_sl": {"top1": 0.69713, "many": 0.7, "medium": 0.65, "rare": 0.6,
                                  "ece": 0.25, "budget": {"images": 208404, "steps": 812,
                                                          "seconds": 160.4}},
              "scratch + ce": {"top1": 0.5, "many": 0.6, "medium": None, "rare": 0.1,
                               "ece": 0.1}}}


def _files(tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps(REPORT))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{tool.START}\nold table 70.6\n{tool.END}\nafter\n")
    return report, readme


def test_table_is_written_from_the_report_and_nothing_else_changes(tmp_path):
    report, readme = _files(tmp_path)
    assert tool.main([str(report), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"{tool.END}\nafter\n")
    assert "old table" not in text
    assert "| simsiam + la_sl | 69.7 | 70.0 | 65.0 | 60.0 | 25.0 | 208,404 | 812 | 160 |" in text
    assert "| scratch + ce | 50.0 | 60.0 | n/a | 10.0 | 10.0 | n/a | n/a | n/a |" in text
    assert "Measured on Test CPU, 2 cores" in text and "4 epochs" in text
    assert tool.main([str(report), "--readme", str(readme), "--check"]) == 0


def test_check_catches_a_hand_typed_figure(tmp_path):
    report, readme = _files(tmp_path)
    tool.main([str(report), "--readme", str(readme)])
    readme.write_text(readme.read_text().replace("69.7", "70.6"))
    assert tool.main([str(report), "--readme", str(readme), "--check"]) == 1


def test_missing_markers_or_report_are_refused(tmp_path):
    report, readme = _files(tmp_path)
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="expected one"):
        tool.main([str(report), "--readme", str(readme)])
    assert readme.read_text() == "no markers here\n"
    assert tool.main([str(tmp_path / "absent.json"), "--readme", str(readme)]) == 2


def test_the_repository_readme_has_one_block():
    text = (ROOT / "README.md").read_text()
    assert text.count(tool.START) == 1 and text.count(tool.END) == 1
