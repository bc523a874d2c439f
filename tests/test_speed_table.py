"""README.md's speed table is generated from the recorded bench JSON files it names (bench/speed_table.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "speed_table.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_the_readme_table_is_what_its_json_files_give():
    done = run("--check")
    assert done.returncode == 0, done.stderr
    readme = (ROOT / "README.md").read_text()
    header = readme[readme.index("<!-- speed-table:") :].split("-->", 1)[0]
    files = header.split(":", 1)[1].split()
    assert files and all((ROOT / name).is_file() and name.startswith("bench/results/") for name in files), files
    assert "Measured on " in readme  # the machine is named


def test_a_hand_edited_figure_is_caught(tmp_path):
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("<!-- speed-table:") : readme.index("<!-- speed-table end -->")]
    first_ratio = next(cell for cell in table.split("|") if cell.strip().endswith("x") and "." in cell)
    edited = tmp_path / "README.md"
    edited.write_text(readme.replace(table, table.replace(first_ratio, " 0.99x ", 1)))
    done = run("--check", "--readme", str(edited))
    assert done.returncode == 1
    assert "README.md's speed table differs from its JSON files" in done.stderr
    assert run("--readme", str(edited)).returncode == 0  # regenerating repairs it
    assert run("--check", "--readme", str(edited)).returncode == 0
    assert edited.read_text() == readme
