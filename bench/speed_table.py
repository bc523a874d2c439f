"""The speed tables of README.md and docs/performance.md, generated from recorded bench JSON files
(never typed by hand).

    python bench/speed_table.py bench/results/A.json bench/results/B.json   # rewrite the README table
    python bench/speed_table.py                                             # regenerate every table
    python bench/speed_table.py --check                                     # are they all up to date?

Each table sits between the lines ``<!-- speed-table: FILES -->`` and ``<!-- speed-table end -->``;
the first names the JSON files it was made from, so ``--check`` (and tests/test_speed_table.py) can
render them again and compare. README.md has one such section (the current recording);
docs/performance.md has one per recorded run. Each row is one result of a
``python -m npresnet.bench --compare torch`` run: model, batch, mode, threads, npresnet's and
torch's median seconds per step, their ratio, the speed-up over one thread where the run measured
it (``--threads 1,N`` / ``--scaling``), and the resident step memory against torch's (``--memory``).
The heading names the CPU (model name, family, model and cache sizes: ``npresnet.bench.machine.cpu_label``)
and BLAS from each file's ``machine``; files of one machine share a table. Where a file also timed
torch in channels_last (the bench does since 0.3: ``torch_channels_last_s``), its table gains a
column with that time and the ratio against it; tables of older files are rendered as before.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from npresnet.bench.machine import cpu_label  # noqa: E402  (this checkout's npresnet)

README = ROOT / "README.md"
PAGES = (README, ROOT / "docs" / "performance.md")  # every file with speed-table sections
START, END = "<!-- speed-table:", "<!-- speed-table end -->"
MODEL_NAMES = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "resnet20": "ResNet-20", "resnet56": "ResNet-56"}


def _machine_line(machine: dict[str, Any]) -> str:
    blas = ", ".join(
        f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')})"
        for b in machine.get("blas", [])
        if "internal_api" in b
    )
    versions = machine.get("versions", {})
    pools = machine.get("numba_pool") or {}  # one run's, or {thread count: that run's} for a scaling run
    per_run = [pools] if "layer" in pools else [p for p in pools.values() if p]
    layers = sorted({p["layer"] for p in per_run})
    layer = f"; Numba's {'/'.join(layers)} threading layer" if layers else ""
    cpu = cpu_label(machine.get("cpu", "?"), machine.get("cpu_id"))
    return (
        f"{cpu}; BLAS {blas or '?'}; numpy {versions.get('numpy', '?')}, "
        f"numba {versions.get('numba', '?')}, torch {versions.get('torch', '?')}; "
        f"kernel choice: {machine.get('autotune', 'fixed')}{layer}"
    )


HEADER = [
    "| model, batch | mode | threads | npresnet | torch | ratio | speed-up vs 1 thread (npresnet / torch) "
    "| step memory vs torch |",
    "|---|---|---|---|---|---|---|---|",
]
# The same with torch's channels_last time and the ratio against it, after the ratio column.
HEADER_CHANNELS_LAST = [
    "| model, batch | mode | threads | npresnet | torch | ratio | torch channels_last (ratio) "
    "| speed-up vs 1 thread (npresnet / torch) | step memory vs torch |",
    "|---|---|---|---|---|---|---|---|---|",
]


def _has_channels_last(report: dict[str, Any]) -> bool:
    return any("torch_channels_last_s" in row for row in report["results"])


def _rows(report: dict[str, Any], channels_last: bool = False) -> list[str]:
    machine = report["machine"]
    scaling = {(s["model"], s["mode"], s["threads"]): s for s in report.get("scaling", [])}
    lines = []
    for row in report["results"]:
        if "torch_s" not in row:
            continue
        threads = row.get("threads", machine.get("threads"))
        speed = scaling.get((row["model"], row["mode"], threads))
        speedup = (
            ""
            if speed is None or speed["threads"] == 1
            else f"{speed['npresnet_speedup']:.2f}x / {speed['torch_speedup']:.2f}x"
        )
        memory = ""
        if row.get("rss_peak_mb") is not None and row.get("torch_rss_peak_mb") is not None:
            memory = (
                f"{row['rss_peak_mb']:.0f} vs {row['torch_rss_peak_mb']:.0f} MB "
                f"({row['rss_peak_mb'] / row['torch_rss_peak_mb']:.2f}x)"
            )
        size = row["image_size"]
        model = f"{MODEL_NAMES.get(row['model'], row['model'])}, {row['batch']} x {size}x{size}"
        cl = ""
        if channels_last:
            cl = " |"
            if "torch_channels_last_s" in row:
                cl = f" {row['torch_channels_last_s']:.3f} s ({row['ratio_channels_last']:.2f}x) |"
        lines.append(
            f"| {model} | {row['mode']} | {threads} | {row['npresnet_s']:.3f} s | {row['torch_s']:.3f} s "
            f"| {row['ratio']:.2f}x |{cl} {speedup} | {memory} |"
        )
    return lines


def render(files: list[str]) -> str:
    """The markdown tables, one per machine (named above it), for these JSON files (repo-relative)."""
    reports: dict[str, list[dict[str, Any]]] = {}
    for name in files:
        report = json.loads((ROOT / name).read_text())
        reports.setdefault(_machine_line(report["machine"]), []).append(report)
    parts = []
    for machine, group in reports.items():
        channels_last = any(_has_channels_last(r) for r in group)
        rows = [line for r in group for line in _rows(r, channels_last)]
        header = HEADER_CHANNELS_LAST if channels_last else HEADER
        parts.append(f"Measured on {machine}:\n\n" + "\n".join(header + rows))
    return "\n\n".join(parts)


def split_readme(text: str, start_at: int = 0) -> tuple[str, list[str], str, str]:
    """(before, files, table, after) of the first generated section from ``start_at`` on."""
    start = text.find(START, start_at)
    end = text.find(END, start)
    if start < 0 or end < 0:
        raise SystemExit(f"error: the page has no '{START} FILES -->' ... '{END}' section")
    header_end = text.index("-->", start) + 3
    files = text[start + len(START) : header_end - 3].split()
    return text[:start], files, text[header_end:end].strip("\n"), text[end + len(END) :]


def sections(text: str) -> list[tuple[list[str], str]]:
    """(files, table) of every generated section of a page, in order."""
    found, at = [], text.find(START)
    while at >= 0:
        before, files, table, _ = split_readme(text, at)
        found.append((files, table))
        at = text.find(START, text.index(END, at))
    return found


def regenerate(text: str) -> str:
    """The page with every section rendered again from the files it names."""
    at = text.find(START)
    while at >= 0:
        before, files, _, after = split_readme(text, at)
        text = before + section(files) + after
        at = text.find(START, len(before) + len(section(files)))
    return text


def section(files: list[str]) -> str:
    return f"{START} {' '.join(files)} -->\n{render(files)}\n{END}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help="bench JSON files (relative to the repository root)")
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md's table is not what its files give")
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="only this page (default: README.md and docs/performance.md; FILES rewrite README.md's table)",
    )
    args = parser.parse_args(argv)
    pages = [args.readme] if args.readme is not None else [page for page in PAGES if page.is_file()]
    if args.check:
        for page in pages:
            for files, table in sections(page.read_text()):
                if table != render(files):
                    print(
                        f"error: {page.name}'s speed table differs from its JSON files; run "
                        f"python bench/speed_table.py{' --readme ' + str(page) if page != README else ''} "
                        f"{' '.join(files)}",
                        file=sys.stderr,
                    )
                    return 1
        return 0
    from npresnet.atomic_write import atomic_write_text

    if not args.files:
        for page in pages:
            atomic_write_text(page, regenerate(page.read_text()))
            print(f"{page.name}: {len(sections(page.read_text()))} speed table(s) regenerated")
        return 0
    page = pages[0]
    before, _, _, after = split_readme(page.read_text())
    files = args.files
    for name in files:
        if not (ROOT / name).is_file():
            print(f"error: no such bench JSON file: {name}", file=sys.stderr)
            return 2
    atomic_write_text(page, before + section(files) + after)
    print(f"{page.name}: speed table from {', '.join(files)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
