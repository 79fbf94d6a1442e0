"""``report.html``: one self-contained page per workdir, readable without a server or a network.

The page holds the run's summary tables (its Markdown rendered), every figure
in the workdir (linked by relative path, so the folder can be moved or zipped
whole), the training curves, the command that reproduces the run, the
provenance block, the complete ``results.json``, and links to the pages of
sub-runs (the cases of ``seed_tables`` and ``dp_curve``). No script, no style
sheet from elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import html
import importlib
import json
import os
import pathlib
import re
import shlex
from typing import Any

from jaxpet import config as config_lib, files

# What each figure shows, by file name; others are captioned with their name.
CAPTIONS = {
    "roc.png": "ROC curves of every attack on log-log axes (the low false-positive corner is "
               "where an attack is dangerous); the dashed line is chance.",
    "curves.png": "Training curves: loss and accuracy per epoch of every trained phase "
                  "(training solid, validation dashed).",
    "sweep.png": "Attack strength against the number of reference models.",
    "exposed.png": "The most exposed examples: the members the attack is most sure of.",
    "privacy_curve.png": "Attack AUC and TPR at 0.1% FPR against epsilon and against the "
                         "target's test accuracy.",
    "confusion.png": "Confusion matrices of the attribute-inference attack.",
    "iterations.png": "Reconstructions of mi_face after each iteration budget.",
    "all_classes.png": "Reconstructions of every class beside a real training image.",
}
# Figures shown first, in this order; the rest follow by name.
ORDER = ("roc.png", "exposed.png", "all_classes.png", "iterations.png", "privacy_curve.png",
         "sweep.png", "confusion.png", "curves.png")
# Markdown files rendered as the page's body, first found first.
SUMMARIES = ("summary.md", "privacy_curve.md", "seed_tables.md", "benchmark.md")

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
pre, code { background: #f6f6f6; font-size: 0.88em; }
pre { padding: 0.7em; overflow-x: auto; white-space: pre-wrap; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.88em; color: #555; }
"""


# ----------------------------------------------------------------------------- Markdown


def _inline(text: str) -> str:
    """Escapes ``text`` and renders the inline Markdown jaxpet writes: code, bold, links."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        part = html.escape(part, quote=False)
        part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
        part = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", r'<img alt="\1" src="\2">', part)
        part = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', part)
        out.append(part)
    return "".join(out)


def markdown_to_html(text: str) -> str:
    """The Markdown subset of jaxpet's summaries as HTML: headings, tables, bullet lists,
    fenced code and paragraphs (everything escaped; no raw HTML passes through)."""
    lines = text.splitlines()
    out: list[str] = []
    paragraph: list[str] = []
    i = 0

    def flush():
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    while i < len(lines):
        line = lines[i].rstrip()
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            block = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith("```"):
                block.append(lines[i])
                i += 1
            out.append(f"<pre>{html.escape(chr(10).join(block))}</pre>")
        elif not stripped:
            flush()
        elif m := re.match(r"(#{1,6})\s+(.*)", stripped):
            flush()
            level = min(len(m.group(1)) + 1, 6)  # the page's own title is the only <h1>
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
        elif stripped.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            i -= 1
            body = [r for r in rows[1:] if not all(re.fullmatch(r":?-{3,}:?", c) for c in r)]
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            cells = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                            for r in body)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif re.match(r"[-*]\s+", stripped):
            flush()
            items = []
            while i < len(lines) and re.match(r"\s*[-*]\s+", lines[i]):
                item = re.sub(r"^[-*]\s+", "", lines[i].strip())
                items.append(f"<li>{_inline(item)}</li>")
                i += 1
            i -= 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            paragraph.append(stripped)
        i += 1
    flush()
    return "\n".join(out)


# ----------------------------------------------------------------------------- the command

# How config.json names an input given from Python (jaxpet.api.PYTHON).
FROM_PYTHON = "python:"


def reproduce_command(results: Mapping[str, Any]) -> str | None:
    """The command line that reruns this result (None when the experiment is not a jaxpet
    script): its script and the flags :func:`jaxpet.config.command_line` writes, after the
    ``PYTHONPATH=...`` the run had (recorded by :func:`jaxpet.runs.provenance`) where it had
    one, so that a model imported from the user's own module is found again."""
    provenance = results.get("provenance", {})
    provenance = provenance if isinstance(provenance, Mapping) else {}
    experiment = provenance.get("experiment")
    config = results.get("config")
    if not experiment or not isinstance(config, Mapping):
        return None
    try:
        module = importlib.import_module(f"jaxpet.experiments.{experiment}")
    except ImportError:
        return None
    cls = getattr(module, "Config", None)
    if cls is None or not dataclasses.is_dataclass(cls):
        return None
    if any(isinstance(v, str) and v.startswith(FROM_PYTHON) for v in config.values()):
        return None  # given Python objects (jaxpet.audit): no command line can give them
    script = f"experiments/{experiment}.py"
    root = pathlib.Path(__file__).resolve().parents[1]
    cwd = provenance.get("cwd")
    elsewhere = (isinstance(cwd, str) and (root / script).is_file()
                 and pathlib.Path(cwd) != root)
    processes = provenance.get("process_count")
    # A multi-process run is shown as the local launcher runs it (a cluster starts the
    # same script once per process instead).
    launcher = (["python", "-m", "jaxpet.launch", f"--num_processes={processes}", "--"]
                if isinstance(processes, int) and processes > 1 else ["python"])
    command = shlex.join([*launcher, str(root / script) if elsewhere else script,
                          *config_lib.command_line(cls, config,
                                                   presets=getattr(module, "PRESETS", None))])
    path = provenance.get("pythonpath")
    if isinstance(path, list) and path and all(isinstance(p, str) and p for p in path):
        # Quoted apart from its name: a quoted 'NAME=value' is a command, not an assignment.
        command = f"PYTHONPATH={shlex.quote(os.pathsep.join(path))} {command}"
    if elsewhere:  # its relative paths are relative to where it ran
        command = f"cd {shlex.quote(str(cwd))} && {command}"
    return command


# ----------------------------------------------------------------------------- the page


def _figures(folder: pathlib.Path) -> list[str]:
    names = sorted(p.name for p in folder.glob("*.png"))
    return [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]


def _sub_pages(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.glob("*/report.html")
                  if p.parent.name != "stages")


def _provenance_table(provenance: Mapping[str, Any]) -> str:
    rows = []
    for key, value in provenance.items():
        if key == "command":
            value = shlex.join(str(v) for v in value) if isinstance(value, list) else value
        elif key == "pythonpath" and isinstance(value, list):
            value = os.pathsep.join(str(v) for v in value)
        elif isinstance(value, Mapping):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        rows.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(str(value))}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def render_page(folder) -> str:
    """The HTML of ``folder``'s page (see the module docstring)."""
    folder = pathlib.Path(folder)
    try:
        results = files.read_json(folder / "results.json")
    except (OSError, ValueError):
        results = {}
    results = results if isinstance(results, dict) else {}
    provenance = results.get("provenance", {})
    experiment = provenance.get("experiment", "run")
    title = f"jaxpet {experiment}: {folder.name}"
    body = [f"<h1>{html.escape(title)}</h1>"]
    when = provenance.get("finished")
    if when:
        backend = html.escape(str(provenance.get("backend")))
        body.append(f"<p>Finished {html.escape(when)} on {backend}"
                    f" ({html.escape(str(provenance.get('device_kind')))}).</p>")
    command = reproduce_command(results)
    if command:
        body.append("<h2>Reproduce</h2><p>From the repository root (a rerun in the same "
                    "workdir reuses its finished stages):</p>"
                    f"<pre>{html.escape(command)}</pre>")
    elif any(isinstance(v, str) and v.startswith(FROM_PYTHON)
             for v in (results.get("config") or {}).values()):
        body.append("<h2>Reproduce</h2><p>Run from Python with objects no command line can "
                    "give (jaxpet.audit or jaxpet.score_logits): rerun that call; with the same "
                    "workdir it reuses the finished stages.</p>")
    for name in SUMMARIES:
        if (folder / name).exists():
            body.append(f'<section class="summary">{markdown_to_html((folder / name).read_text())}'
                        "</section>")
    figures = _figures(folder)
    if figures:
        body.append("<h2>Figures</h2>")
        for name in figures:
            caption = CAPTIONS.get(name, name)
            body.append(f'<figure><img src="{html.escape(name)}" alt="{html.escape(name)}">'
                        f"<figcaption><code>{html.escape(name)}</code>: {html.escape(caption)}"
                        "</figcaption></figure>")
    subs = _sub_pages(folder)
    if subs:
        body.append("<h2>Sub-runs</h2><ul>" + "".join(
            f'<li><a href="{html.escape(s)}">{html.escape(s.rsplit("/", 1)[0])}</a></li>'
            for s in subs) + "</ul>")
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    body.append("<h2>Files</h2><ul>" + "".join(
        f'<li><a href="{html.escape(n)}">{html.escape(n)}</a></li>' for n in names) + "</ul>")
    if provenance:
        body.append("<h2>Provenance</h2>" + _provenance_table(provenance))
    if results:
        body.append("<details><summary>results.json (every number of the run)</summary>"
                    f"<pre>{html.escape(json.dumps(results, indent=2))}</pre></details>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_page(folder) -> pathlib.Path:
    """Writes ``folder/report.html`` atomically; returns its path."""
    folder = pathlib.Path(folder)
    return files.write_text(folder / "report.html", render_page(folder))
