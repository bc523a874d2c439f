"""README.md's speed table is generated from the recorded bench JSON files it names (bench/speed_table.py)."""

from __future__ import annotations

import importlib.util
import json
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
    hand_edit = " 9.99x " if first_ratio.strip() != "9.99x" else " 9.98x "  # never the figure it replaces
    edited.write_text(readme.replace(table, table.replace(first_ratio, hand_edit, 1)))
    done = run("--check", "--readme", str(edited))
    assert done.returncode == 1
    assert "README.md's speed table differs from its JSON files" in done.stderr
    assert run("--readme", str(edited)).returncode == 0  # regenerating repairs it
    assert run("--check", "--readme", str(edited)).returncode == 0
    assert edited.read_text() == readme


CACHES = {"L2 unified": "1024K", "L3 unified": "32768K"}
ZEN4 = {"vendor": "AuthenticAMD", "family": "25", "model": "17", "caches": CACHES}
ZEN5 = {"vendor": "AuthenticAMD", "family": "26", "model": "2", "caches": CACHES}


def test_two_cpus_of_one_model_name_get_their_own_file_names_and_tables(tmp_path):
    from npresnet.bench.machine import cpu_label, file_label

    # bench/run.sh's file names and the table headings tell Zen 4 from Zen 5 ("AMD EPYC" both)
    assert file_label("AMD EPYC", ZEN4) == "amd-epyc-f25-m17"
    assert file_label("AMD EPYC", ZEN5) == "amd-epyc-f26-m2"
    assert file_label("Intel(R) Xeon(R) Processor", {}) == "intel-xeon-processor"  # no cpu_id: the name alone
    assert cpu_label("AMD EPYC", ZEN4) == "AMD EPYC (family 25 model 17, L2 1024K, L3 32768K)"
    assert cpu_label("AMD EPYC", None) == "AMD EPYC"

    spec = importlib.util.spec_from_file_location("speed_table", SCRIPT)
    speed_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed_table)
    recorded = json.loads((ROOT / "bench/results/amd-epyc-2026-12-04-split-resnet20-b128.json").read_text())
    names = []
    for label, identity in (("zen4", ZEN4), ("zen5", ZEN5)):
        recorded["machine"]["cpu_id"] = identity
        path = tmp_path / f"{label}.json"
        path.write_text(json.dumps(recorded))
        names.append(str(path))
    tables = speed_table.render(names)
    assert tables.count("Measured on AMD EPYC (family 2") == 2, tables
    assert tables.index("family 25 model 17") < tables.index("family 26 model 2")


def test_a_file_with_torchs_channels_last_time_gets_its_column_and_older_files_render_as_before(tmp_path):
    spec = importlib.util.spec_from_file_location("speed_table", SCRIPT)
    speed_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed_table)
    name = "bench/results/amd-epyc-2026-12-04-split-resnet20-b128.json"
    old = json.loads((ROOT / name).read_text())
    assert not any("torch_channels_last_s" in row for row in old["results"])  # an older file
    assert speed_table.HEADER[0] in speed_table.render([name])
    new = json.loads(json.dumps(old))
    for row in new["results"]:
        row["torch_channels_last_s"] = row["torch_s"] / 2
        row["ratio_channels_last"] = row["npresnet_s"] / row["torch_channels_last_s"]
    (tmp_path / "new.json").write_text(json.dumps(new))
    table = speed_table.render([str(tmp_path / "new.json"), name]).splitlines()
    assert table[2] == speed_table.HEADER_CHANNELS_LAST[0]
    rows = [line for line in table if line.startswith("| ResNet")]
    assert len(rows) == 2 * len(old["results"]) and all(line.count("|") == 10 for line in rows)
    first = new["results"][0]
    assert f"| {first['torch_channels_last_s']:.3f} s ({2 * first['ratio']:.2f}x) |" in rows[0]
    assert "| |" in rows[len(old["results"])]  # the older file's row: the column left empty
