"""A cohort's QC as one self-contained page, ``qc.html``: one row per case, the cases with a failed organ first,
then those with organs to check, then the unfinished ones, then the rest; in each row the flagged organs first,
each with its status, volume, reasons and thumbnail (thumbnails.py, embedded as PNG data, so the page can be
moved or mailed as one file), then the organs that passed."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

from .checks import CHECK, FAIL
from .report import OK

_COLOURS = {OK: "#2e7d32", CHECK: "#b26a00", FAIL: "#c62828"}
_ORDER = {FAIL: 0, CHECK: 1, None: 2, OK: 3}  # None: the case did not finish


@dataclass
class CaseQC:
    """One row: the case's ``organs`` (dicts with name, volume_ml, status, reasons and, for a flagged organ, the
    PNG bytes of its ``thumbnail`` or None), or ``finished`` False and no organs."""

    case: str
    finished: bool
    organs: list[dict] = field(default_factory=list)

    @property
    def status(self) -> str | None:
        if not self.finished:
            return None
        statuses = {o.get("status") for o in self.organs}
        return FAIL if FAIL in statuses else CHECK if CHECK in statuses else OK


def cohort_page(rows: list[CaseQC], title: str, note: str) -> str:
    """The page's HTML: ``title`` as its heading, ``note`` (plain text) under it."""
    rows = sorted(rows, key=lambda r: (_ORDER[r.status], r.case))
    counts = {s: sum(r.status == s for r in rows) for s in _ORDER}
    summary = (f"{len(rows)} cases: {counts[FAIL]} with a failed organ, {counts[CHECK]} with organs to check, "
               f"{counts[OK]} ok" + (f", {counts[None]} not finished" if counts[None] else ""))
    body = "\n".join(_row(r) for r in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 6px; vertical-align: top; text-align: left; }}
.status {{ color: white; border-radius: 3px; padding: 1px 6px; font-weight: bold; }}
.organ {{ display: inline-block; margin: 0 12px 8px 0; max-width: 300px; }}
.organ img {{ display: block; margin-top: 4px; }}
ul {{ margin: 2px 0; padding-left: 1.2em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(note)}</p>
<p>{html.escape(summary)}</p>
<table>
<tr><th>case</th><th>status</th><th>flagged organs</th><th>organs that passed</th></tr>
{body}
</table>
</body></html>
"""


def _badge(status: str | None) -> str:
    if status is None:
        return "not finished (see cases.csv)"
    return f'<span class="status" style="background:{_COLOURS[status]}">{status}</span>'


def _row(r: CaseQC) -> str:
    flagged = [o for o in r.organs if o.get("status") in (CHECK, FAIL)]
    flagged.sort(key=lambda o: (_ORDER[o["status"]], o["name"]))
    passed = [o for o in r.organs if o not in flagged]
    cells = []
    for o in flagged:
        reasons = "".join(f"<li>{html.escape(x)}</li>" for x in o.get("reasons", []))
        picture = ""
        if o.get("thumbnail"):
            data = base64.b64encode(o["thumbnail"]).decode("ascii")
            picture = (f'<img alt="{html.escape(o["name"])}: axial and coronal slice with its outline" '
                       f'src="data:image/png;base64,{data}">')
        cells.append(f'<div class="organ"><b>{html.escape(o["name"])}</b> {_badge(o["status"])} '
                     f'{o["volume_ml"]:.1f} mL<ul>{reasons}</ul>{picture}</div>')
    ok = ", ".join(f'{html.escape(o["name"])} ({o["volume_ml"]:.1f} mL)' for o in passed)
    return (f"<tr><td>{html.escape(r.case)}</td><td>{_badge(r.status)}</td><td>{''.join(cells)}</td>"
            f"<td>{ok}</td></tr>")
