"""MkDocs hook: benchmark tables rendered from the data files in ``benchmarks/results/<machine>.json``.

A page writes ``<!-- benchmark: MACHINE TABLE -->`` (e.g. ``<!-- benchmark: intel-xeon-avx512 dense -->``) where a
table goes; the hook puts the table's title, the machine, the table and the command that measured it there. Each
data file holds one machine's tables as the benchmark scripts print them (``--markdown``), so the numbers live in
one place: the README's summary table is checked against them by ``tests/test_readme.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- benchmark: ([\w.-]+) (\w+) -->$", re.MULTILINE)  # on a line of its own


def load_table(machine: str, table: str) -> tuple[dict, dict]:
    """The machine's record and one of its tables; a missing file or table is an error naming what exists."""
    path = RESULTS / f"{machine}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in RESULTS.glob("*.json")))
        raise ValueError(f"no benchmark data for machine {machine!r} ({path}); known: {known}")
    record = json.loads(path.read_text())
    if table not in record["tables"]:
        raise ValueError(f"{path.name} has no table {table!r}; it has: {', '.join(record['tables'])}")
    return record, record["tables"][table]


def render(machine: str, table: str) -> str:
    record, data = load_table(machine, table)
    aligns = ["---:" if a == "right" else "---" for a in data["align"]]
    lines = [
        f"**{data['title']}.** {record['machine']}; {record['software']}. {data['units']}",
        "",
        "| " + " | ".join(data["columns"]) + " |",
        "|" + "|".join(aligns) + "|",
        *("| " + " | ".join(row) + " |" for row in data["rows"]),
        "",
        *(f"{note}.\n" for note in data["notes"]),
        f"Measured with `{data['command']}`.",
    ]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return MARKER.sub(lambda match: render(match.group(1), match.group(2)), markdown)
