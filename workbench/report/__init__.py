"""Interpretability reports: one self-contained HTML file (plotly.js inline, works offline) and a Markdown twin.

``build_report(results_dir)`` reads every workbench result JSON below ``results_dir`` (the demo's
``results.json``, a toy ``card.json``, each analysis's ``result.json``, export ``parity.json``), writes one section
per result in a fixed order (model card, overview, layer and head sensitivity, SEA, robustness, DAC, export and
parity), each with text generated from its numbers and the analysis's own figures, and returns the two paths.

The HTML page records whether it rendered, out of sight: ``<script type="application/json" id="report-status">``
holds the number of figures, how many drew (a plotly SVG exists) and any script error, so a headless browser can
check it (``tests/test_report.py``).
"""

__all__ = ["build_report", "collect_sections"]

import contextlib
import html
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.io import atomic_file, display_path
from workbench.report.sections import Section, section_for
from workbench.schema import read_json

_STATUS_JS = """
<script>
window.__reportErrors = [];
window.addEventListener('error', function (e) { window.__reportErrors.push(String(e.message || e)); });
</script>
"""
_CHECK_JS = """
<script>
window.addEventListener('load', function () {
  setTimeout(function () {
    var figs = document.querySelectorAll('div.report-figure');
    var drawn = 0;
    figs.forEach(function (f) { if (f.querySelector('.main-svg')) { drawn += 1; } });
    document.getElementById('report-status').textContent = JSON.stringify(
      {figures: figs.length, drawn: drawn, errors: window.__reportErrors});
  }, 500);
});
</script>
"""
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
code { background: #f3f3f3; padding: 0 3px; }
h2 { border-bottom: 1px solid #ddd; margin-top: 2em; }
"""


def collect_sections(results_dir: "str | Path") -> "list[Section]":
    """One section per recognised result JSON (UTF-8, a BOM accepted) below ``results_dir``, in report order."""
    root = Path(results_dir)
    if not root.is_dir():
        raise WorkbenchError(f"{display_path(root)!r} is not a folder; pass the folder holding workbench results.")
    sections = []
    for path in sorted(root.rglob("*.json")):
        if "figures" in path.parts or path.name.startswith("."):
            continue
        try:  # a JSON file that is not a workbench result (or not JSON at all) is not part of the report
            data = read_json(path)
        except WorkbenchError:
            continue
        sec = section_for(data, source=display_path(path))
        if sec is not None:
            sec.source = display_path(path.relative_to(root))
            sections.append(sec)
    if not sections:
        raise WorkbenchError(
            f"no workbench results found below {display_path(root)}; run `workbench demo` or an analysis first."
        )
    return sorted(sections, key=lambda s: (s.order, s.title))


def _md_to_html(text: str) -> str:
    """The small Markdown subset the sections use: paragraphs, pipe tables, **bold** and `code`."""
    import re

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    out, table = [], []
    for line in text.split("\n") + [""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            rows = [r.strip("|").split("|") for r in table if not set(r.replace("|", "").strip()) <= {"-", ""}]
            out.append(
                "<table>"
                + "".join(
                    "<tr>"
                    + "".join(
                        f"<{'th' if i == 0 else 'td'}>{inline(c.strip())}</{'th' if i == 0 else 'td'}>" for c in row
                    )
                    + "</tr>"
                    for i, row in enumerate(rows)
                )
                + "</table>"
            )
            table = []
        if line.strip():
            out.append(f"<p>{inline(line)}</p>")
    return "\n".join(out)


def build_report(
    results_dir: "str | Path", out_dir: "str | Path | None" = None, title: str = "workbench report"
) -> "tuple[Path, Path]":
    """Write ``report.html`` and ``report.md`` (UTF-8) for the results below ``results_dir`` (into ``out_dir``,
    default ``results_dir``, created when missing; a failed write leaves no folder it created behind); returns
    their paths. Text that is not valid UTF-8 (a title with lone surrogates) is written with ``\\x..`` escapes."""
    import plotly.offline

    out = Path(out_dir or results_dir)
    if out.exists() and not out.is_dir():
        raise WorkbenchError(
            f"--out {display_path(out)!r} is a file; pass a folder for report.html and report.md (it is created "
            f"when missing)."
        )
    sections = collect_sections(results_dir)
    md = [
        f"# {title}",
        "",
        f"Generated from {len(sections)} result files below `{display_path(Path(results_dir).name)}`.",
    ]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Generated from {len(sections)} result files. Figures are interactive (plotly, inline).</p>",
    ]
    n_fig = 0
    for s in sections:
        md += ["", f"## {s.title}", "", s.markdown, "", f"_source: {s.source}_"]
        if s.figures:
            md += ["", "Figures (in report.html): " + ", ".join(s.figures)]
        body += [f"<h2>{html.escape(s.title)}</h2>", _md_to_html(s.markdown)]
        for name, fig in s.figures.items():
            n_fig += 1
            div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{n_fig}-{name}")
            body.append(f'<div class="report-figure" data-name="{html.escape(name)}">{div}</div>')
        body.append(f"<p><small>source: {html.escape(s.source)}</small></p>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        f"<style>{_CSS}</style>{_STATUS_JS}<script>{plotly.offline.get_plotlyjs()}</script></head><body>"
        + "\n".join(body)
        + '<script type="application/json" id="report-status">pending</script>'
        + _CHECK_JS
        + "</body></html>"
    )
    page_bytes = page.encode("utf-8", "backslashreplace")
    md_bytes = ("\n".join(md) + "\n").encode("utf-8", "backslashreplace")
    html_path, md_path = out / "report.html", out / "report.md"
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkbenchError(
            f"--out {display_path(out)!r} could not be created ({type(e).__name__}: {e.strerror}); pass a folder "
            f"that can be written."
        ) from None
    try:
        atomic_file(html_path, lambda p: Path(p).write_bytes(page_bytes))
        atomic_file(md_path, lambda p: Path(p).write_bytes(md_bytes))
    except BaseException:
        if created:  # leave no half-written report folder behind
            for path in (html_path, md_path):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    return html_path, md_path
