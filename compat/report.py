"""Outputs of a run: the terminal matrix, report.json and a self-contained report.html."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any


def passed(result: dict[str, Any]) -> bool:
    cells_ok = all(c["status"] == "pass" for c in result.get("cells", []))
    sdp_ok = all(s["status"] == "pass" for s in result.get("sdp", []))
    return cells_ok and sdp_ok and not result.get("errors")


def by_version(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The cells grouped by the engine and version of the browsers in them (a cell counts for
    both of its browsers), engine then version order."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for c in result.get("cells", []):
        for side in (c.get("browsers") or {}).values():
            if side.get("engine") == "aiortc":
                continue
            key = (side.get("engine", ""), side.get("version", ""), side.get("name", ""))
            g = groups.setdefault(
                key,
                {"engine": key[0], "version": key[1], "name": key[2], "cells": 0, "failed": []},
            )
            g["cells"] += 1
            if c["status"] != "pass":
                g["failed"].append(f"{c['pair']}/{c['scenario']}")
    for name, why in (result.get("fetch_errors") or {}).items():
        info = (result.get("catalogue") or {}).get(name, {})
        key = (info.get("engine", ""), info.get("version", ""), name)
        groups.setdefault(
            key, {"engine": key[0], "version": key[1], "name": name, "cells": 0, "failed": []}
        )["error"] = why
    return [groups[k] for k in sorted(groups)]


def matrix_text(result: dict[str, Any]) -> str:
    pairs = result.get("pairs", [])
    names = [s["name"] for s in result.get("scenarios", [])]
    by = {(c["pair"], c["scenario"]): c for c in result.get("cells", [])}
    width = max([12, *(len(p) for p in pairs)])
    lines = ["scenario".ljust(14) + "".join(p.ljust(width + 2) for p in pairs)]
    for n in names:
        row = n.ljust(14)
        for p in pairs:
            c = by.get((p, n))
            mark = "-" if c is None else ("PASS" if c["status"] == "pass" else "FAIL")
            if c is not None:
                mark += f" {c['seconds']:.0f}s"
            row += mark.ljust(width + 2)
        lines.append(row)
    sdp = result.get("sdp", [])
    if sdp:
        lines.append("")
        lines.append("SDP suite (fixture, room codec -> picked video codec)")
        for s in sdp:
            video = [
                v.get("codec") for v in (s.get("picked") or {}).values() if v.get("kind") == "video"
            ]
            mark = "PASS" if s["status"] == "pass" else "FAIL"
            lines.append(f"  {mark}  {s['fixture']:<28} {s.get('room_codec', ''):<5} -> {video}")
    for b, info in sorted(result.get("browsers", {}).items()):
        pkg = f" [{info['package']} {info['package_version']}]" if info.get("package") else ""
        lines.append(f"{b}: {info.get('version')}{pkg} ({info.get('executable')})")
    for g in by_version(result):
        ok = g["cells"] - len(g["failed"])
        err = f" ({g['error']})" if g.get("error") else ""
        lines.append(
            f"  {g['engine']:<8} {g['version'] or '?':<28} {g['name']:<12} {ok}/{g['cells']}{err}"
        )
    for e in result.get("errors", []):
        lines.append(f"ERROR: {e}")
    total = len(result.get("cells", []))
    ok = sum(1 for c in result.get("cells", []) if c["status"] == "pass")
    sdp_ok = sum(1 for s in sdp if s["status"] == "pass")
    took = result.get("finished", time.time()) - result.get("started", time.time())
    lines.append(
        f"cells {ok}/{total} passed, SDP {sdp_ok}/{len(sdp)} passed, {took:.0f}s: "
        + ("ALL GREEN" if passed(result) else "FAILURES")
    )
    return "\n".join(lines)


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:20px;color:#222}
table{border-collapse:collapse;margin:10px 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
.pass{background:#d9f2d9}.fail{background:#f7d4d4}.none{background:#eee}
a{color:inherit}pre{background:#f6f6f6;padding:6px;overflow:auto;max-height:300px;font-size:12px}
img{border:1px solid #999;margin:4px;max-width:340px}
details{margin:6px 0 12px}h3{margin:18px 0 4px}.err{color:#a00;white-space:pre-wrap}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _cell_id(pair: str, scenario: str) -> str:
    return f"c-{pair}-{scenario}"


def _evidence_html(ev: dict[str, Any]) -> str:
    shots = ev.get("screenshots", [])
    rest = {k: v for k, v in ev.items() if k != "screenshots"}
    out = ""
    for s in shots:
        out += (
            f'<figure style="display:inline-block"><img alt="{_esc(s["label"])}" '
            f'src="data:image/png;base64,{s["png"]}"><figcaption>{_esc(s["label"])}'
            "</figcaption></figure>"
        )
    out += f"<pre>{_esc(json.dumps(rest, indent=1, default=str))}</pre>"
    return out


def html_report(result: dict[str, Any]) -> str:
    pairs = result.get("pairs", [])
    scen = result.get("scenarios", [])
    by = {(c["pair"], c["scenario"]): c for c in result.get("cells", [])}
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result.get("started", 0)))
    took = result.get("finished", 0) - result.get("started", 0)
    verdict = "ALL GREEN" if passed(result) else "FAILURES"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>compat report</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>Browser compatibility: {_esc(verdict)}</h1>",
        f"<p>{_esc(result.get('mode'))} matrix, started {_esc(started)}, took {took:.0f}s.</p>",
    ]
    parts.append(
        "<h2>Browsers</h2><table><tr><th>name</th><th>version</th><th>user agent</th>"
        "<th>executable</th></tr>"
    )
    for name, info in sorted(result.get("browsers", {}).items()):
        parts.append(
            f"<tr><td>{_esc(name)}</td><td>{_esc(info.get('version'))}</td>"
            f"<td>{_esc(info.get('userAgent'))}</td><td>{_esc(info.get('executable'))}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        "<h2>By engine and version</h2><table><tr><th>engine</th><th>version</th>"
        "<th>browser</th><th>cells passed</th><th>failed cells</th></tr>"
    )
    for g in by_version(result):
        ok = g["cells"] - len(g["failed"])
        cls = "pass" if not g["failed"] and not g.get("error") else "fail"
        failed = ", ".join(g["failed"]) + (f" {g['error']}" if g.get("error") else "")
        parts.append(
            f"<tr class='{cls}'><td>{_esc(g['engine'])}</td><td>{_esc(g['version'])}</td>"
            f"<td>{_esc(g['name'])}</td><td>{ok}/{g['cells']}</td><td>{_esc(failed)}</td></tr>"
        )
    parts.append("</table>")
    for e in result.get("errors", []):
        parts.append(f"<p class='err'>{_esc(e)}</p>")
    parts.append("<h2>Matrix</h2><table><tr><th>scenario</th>")
    parts += [f"<th>{_esc(p)}</th>" for p in pairs]
    parts.append("</tr>")
    for s in scen:
        parts.append(f"<tr><td title='{_esc(s.get('doc'))}'>{_esc(s['name'])}</td>")
        for p in pairs:
            c = by.get((p, s["name"]))
            if c is None:
                parts.append("<td class='none'>-</td>")
            else:
                parts.append(
                    f"<td class='{_esc(c['status'])}'><a href='#{_cell_id(p, s['name'])}'>"
                    f"{_esc(c['status'].upper())}</a> {c['seconds']:.0f}s</td>"
                )
        parts.append("</tr>")
    parts.append("</table><h2>Scenarios</h2><ul>")
    parts += [f"<li><b>{_esc(s['name'])}</b>: {_esc(s.get('doc'))}</li>" for s in scen]
    parts.append("</ul>")
    sdp = result.get("sdp", [])
    if sdp:
        parts.append(
            "<h2>SDP suite</h2><table><tr><th>fixture</th><th>browser</th><th>room</th>"
            "<th>result</th><th>picked</th><th>source</th></tr>"
        )
        for r in sdp:
            picked = "; ".join(
                f"{m}: {v.get('codec') or v.get('proto') or 'rejected'} {v.get('fmtp') or ''}"
                for m, v in (r.get("picked") or {}).items()
            )
            parts.append(
                f"<tr class='{_esc(r['status'])}'><td>{_esc(r['fixture'])}</td>"
                f"<td>{_esc(r.get('browser'))}</td>"
                f"<td>{_esc(r.get('room_codec'))}</td><td>{_esc(r['status'].upper())}"
                f"<div class='err'>{_esc(r.get('error') or '')}</div></td><td>{_esc(picked)}</td>"
                f"<td>{_esc(r.get('source'))}</td></tr>"
            )
        parts.append("</table>")
    parts.append("<h2>Evidence per cell</h2>")
    for c in result.get("cells", []):
        parts.append(
            f"<h3 id='{_cell_id(c['pair'], c['scenario'])}' class='{_esc(c['status'])}'>"
            f"{_esc(c['pair'])} / {_esc(c['scenario'])}: {_esc(c['status'].upper())} "
            f"({c['seconds']:.1f}s)</h3>"
        )
        if c.get("error"):
            parts.append(f"<div class='err'>{_esc(c['error'])}</div>")
        parts.append(
            f"<details {'open' if c['status'] != 'pass' else ''}><summary>evidence</summary>"
            f"{_evidence_html(c.get('evidence') or {})}</details>"
        )
    parts.append("</body></html>")
    return "".join(parts)


def write(result: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    j = directory / "report.json"
    h = directory / "report.html"
    j.write_text(json.dumps(result, indent=1, default=str))
    h.write_text(html_report(result))
    return j, h
