"""Write the evidence of docs/rules.md from ``scripts/bench_rules.py`` outputs.

For every factor, for every dataset (``LABEL=DIR``, DIR holding ``<factor>/ablate.json``): the
markdown table and paired differences of ``archgen.ablate_report.render``, the plot drawn again
to ``docs/rules/<factor>-<label>.png``, and the verdict written in ``VERDICTS``
(scripts/rules_verdicts.py, by a person, from these numbers). Replaces what lies between the two
markers in docs/rules.md. Each ``ablate.json`` read from a DIR is kept as
``docs/rules/data/<label>/<factor>.json``; without arguments the doc is written again from those.

    python scripts/rules_doc.py digits=/tmp/rules_digits textures=/tmp/rules_textures mnist10k=/tmp/rules_mnist
    python scripts/rules_doc.py          # again, from docs/rules/data
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from archgen.ablate_factors import FACTORS
from archgen.ablate_report import plot, render

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "rules.md"
DATA = ROOT / "docs" / "rules" / "data"
BEGIN, END = "<!-- evidence: scripts/rules_doc.py -->", "<!-- end of evidence -->"
ORDER = ("R1", "R2", "R3", "R4", "R5", "R6", "R7", "balance", "lr", "loss", "reg", "batch", "early-stopping")
VERDICTS: dict[str, str] = {}
try:
    from rules_verdicts import VERDICTS  # noqa: F811  (scripts/rules_verdicts.py)
except ImportError:
    pass


def _data_flag(data: str) -> str:
    """The --data value as docs show it: no machine paths."""
    if data.startswith("npz:"):
        return "npz:textures.npz"
    if data.startswith("idx:"):
        return "idx:mnist10k/"
    return data


def section(name: str, sources: list[tuple[str, Path]]) -> str:
    out = [f"## {name}", "", f"**Claim.** {FACTORS[name].claim}.", ""]
    for label, folder in sources:
        path = folder / name / "ablate.json" if folder != DATA / label else folder / f"{name}.json"
        if not path.exists():
            out += [f"*{label}: not measured.*", ""]
            continue
        doc = json.loads(path.read_text())
        kept = DATA / label / f"{name}.json"
        if path != kept:
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps(doc, indent=1) + "\n")
        figure = ROOT / "docs" / "rules" / f"{name}-{label}.png"
        figure.parent.mkdir(exist_ok=True)
        plot({**doc, "data": _data_flag(doc["data"])}, figure)
        text = render(doc, "markdown").replace(doc["data"], _data_flag(doc["data"])).splitlines()[2:]
        flags = f" --epochs {doc['epochs']}" if doc["epochs"] != 20 else ""
        flags += f" --time-budget {doc['time_budget_s']:g}" if doc.get("time_budget_s") else ""
        out += [f"### {label}", "", *text, "", f"![{name} on {label}](rules/{figure.name})", "",
                f"`archgen ablate --rule {name} --data {_data_flag(doc['data'])}"
                f" --seeds {doc['seeds']} --networks {doc['networks']}{flags}` ({doc['wall_s']:.0f} s)", ""]
    out += [f"**Verdict.** {VERDICTS.get(name, 'not yet judged.')}", ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    sources = [(a.split("=", 1)[0], Path(a.split("=", 1)[1])) for a in argv]
    if not sources:
        sources = [(d.name, d) for d in sorted(DATA.iterdir()) if d.is_dir()]
    body = "\n".join(section(name, sources) for name in ORDER)
    text = DOC.read_text()
    head = text.split(BEGIN)[0] if BEGIN in text else text.rstrip("\n") + "\n\n"
    tail = text.split(END, 1)[1] if END in text else "\n"
    DOC.write_text(f"{head}{BEGIN}\n\n{body}\n{END}{tail}")
    print(f"{DOC}: {len(ORDER)} sections from {', '.join(label for label, _ in sources)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
