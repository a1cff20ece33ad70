"""Figures: results in, plotly ``Figure`` out (never ``.show()``), plus one writer for a folder of figures.

Every analysis's ``plot(result)`` builds on these, and the report (``workbench/report``) embeds the same Figures.
"""

__all__ = ["heatmap", "heatmap_grid", "lines", "bars", "points", "write_figures"]

from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.io import atomic_file


def _fmt(v: "float | int | None") -> str:
    return "" if v is None else f"{v:.2f}"


def heatmap(
    z: Sequence[Sequence],
    x: Sequence,
    y: Sequence,
    *,
    title: str,
    x_title: str,
    y_title: str,
    colorscale: str = "Viridis",
    zmid: "float | None" = None,
    text: bool = True,
) -> go.Figure:
    """One annotated heatmap; ``z[i][j]`` is the value at ``y[i]``, ``x[j]``."""
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(v) for v in x],
            y=[str(v) for v in y],
            colorscale=colorscale,
            zmid=zmid,
            text=[[_fmt(v) for v in row] for row in z] if text else None,
            texttemplate="%{text}" if text else None,
            hovertemplate=f"{y_title} %{{y}}, {x_title} %{{x}}: %{{z:.3f}}<extra></extra>",
        )
    )
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, template="plotly_white")
    return fig


def heatmap_grid(
    panels: "list[tuple]",
    x: Sequence,
    y: Sequence,
    *,
    title: str,
    x_title: str,
    y_title: str,
    scale: "tuple[str, float, float] | None" = None,
) -> go.Figure:
    """Side-by-side annotated heatmaps sharing axes. With ``scale = (colorscale, zmin, zmax)`` every panel is
    ``(subtitle, z)`` on that one colour scale, with one colour bar; without it each panel is
    ``(subtitle, z, colorscale, zmid)`` with a colour bar of its own."""
    n = len(panels)
    fig = make_subplots(
        rows=1, cols=n, subplot_titles=[p[0] for p in panels], horizontal_spacing=0.06 if scale else 0.11
    )
    font = 11 if len(x) * n <= 24 else 9 if len(x) * n <= 40 else 8
    for k, panel in enumerate(panels, start=1):
        name, z = panel[0], panel[1]
        trace: dict = {
            "z": z,
            "x": [str(v) for v in x],
            "y": [str(v) for v in y],
            "text": [[_fmt(v) for v in row] for row in z],
            "texttemplate": "%{text}",
            "textfont": {"size": font},
            "xgap": 1,
            "ygap": 1,
            "hovertemplate": f"{name}<br>{y_title} %{{y}}, {x_title} %{{x}}: %{{z:.3f}}<extra></extra>",
        }
        if scale:
            trace["coloraxis"] = "coloraxis"
        else:
            domain = fig.layout[f"xaxis{'' if k == 1 else k}"].domain
            trace.update(
                colorscale=panel[2],
                zmid=panel[3],
                showscale=True,
                colorbar={"x": domain[1] + 0.005, "thickness": 10, "len": 0.9},
            )
        fig.add_trace(go.Heatmap(**trace), row=1, col=k)
        fig.update_xaxes(title_text=x_title, type="category", row=1, col=k)
        fig.update_yaxes(type="category", row=1, col=k)
    if scale:
        fig.update_layout(
            coloraxis={"colorscale": scale[0], "cmin": scale[1], "cmax": scale[2], "colorbar": {"thickness": 12}}
        )
    fig.update_yaxes(title_text=y_title, row=1, col=1)
    fig.update_layout(
        title=title,
        template="plotly_white",
        height=max(420, 140 + 26 * len(y)),
        width=min(1400, max(560, (60 + 34 * len(x)) * n + 160)),
    )
    return fig


def lines(series: "dict[str, tuple[Sequence, Sequence]]", *, title: str, x_title: str, y_title: str) -> go.Figure:
    """One line per named ``(x, y)`` series."""
    fig = go.Figure(
        [go.Scatter(x=list(xs), y=list(ys), mode="lines+markers", name=name) for name, (xs, ys) in series.items()]
    )
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, template="plotly_white")
    return fig


def bars(
    groups: "dict[str, tuple[Sequence, Sequence, Sequence | None]]", *, title: str, y_title: str, x_title: str = ""
) -> go.Figure:
    """Grouped bars: one trace per named ``(x, y, intervals)``; ``intervals`` is a list of ``[low, high]`` or None."""
    fig = go.Figure()
    for name, (xs, ys, cis) in groups.items():
        err = (
            None
            if cis is None
            else {
                "type": "data",
                "array": [hi - y for (lo, hi), y in zip(cis, ys)],
                "arrayminus": [y - lo for (lo, hi), y in zip(cis, ys)],
            }
        )
        fig.add_bar(name=name, x=list(xs), y=list(ys), error_y=err)
    fig.update_layout(title=title, barmode="group", xaxis_title=x_title, yaxis_title=y_title, template="plotly_white")
    return fig


def points(
    series: "dict[str, tuple[Sequence, Sequence, Sequence | None, str]]", *, title: str, x_title: str, y_title: str
) -> go.Figure:
    """Scatter series ``name -> (x, y, hover labels, mode)`` (mode: "lines+markers" or "markers")."""
    fig = go.Figure(
        [
            go.Scatter(
                x=list(xs),
                y=list(ys),
                text=None if labels is None else list(labels),
                mode=mode,
                name=name,
                marker={"size": 12 if mode == "markers" else 6},
            )
            for name, (xs, ys, labels, mode) in series.items()
        ]
    )
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title, template="plotly_white")
    return fig


def write_figures(folder: "str | Path", figures: "dict[str, go.Figure]") -> list[Path]:
    """``<name>.json`` (plotly JSON, for the report) per figure and one ``figures.html`` showing all of them,
    self-contained (plotly.js inline, works offline). Written atomically; returns the paths."""
    folder = Path(folder)
    paths = []
    for name, fig in figures.items():
        path = folder / f"{name}.json"
        atomic_file(path, lambda p, fig=fig: Path(p).write_text(fig.to_json()))
        paths.append(path)
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures.values())]
    html = "<!doctype html><html><head><meta charset='utf-8'></head><body>" + "".join(parts) + "</body></html>"
    atomic_file(folder / "figures.html", lambda p: Path(p).write_text(html))
    return [*paths, folder / "figures.html"]
