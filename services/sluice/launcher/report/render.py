"""Write a report as Markdown (report.md) with one PNG per chart beside it."""

from __future__ import annotations

from pathlib import Path

from sluice.launcher.report.model import Chart, Report


class ChartsUnavailableError(RuntimeError):
    """matplotlib is not installed (the `report` extra)."""


def write(report: Report, out_dir: Path) -> Path:
    """Write report.md and its charts into out_dir; return the Markdown file's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {report.title}", "", f"Period: {report.period}", ""]
    verdict = "**met**" if report.passed else "**not met**"
    judged = [m for m in report.measures if m.ok is not None]
    if judged:
        lines += [f"Targets: {verdict} ({sum(bool(m.ok) for m in judged)} of {len(judged)}).", ""]
    lines += ["| Measure | Value | Target | Result |", "|---|---|---|---|"]
    for m in report.measures:
        result = "" if m.ok is None else ("pass" if m.ok else "**FAIL**")
        lines.append(f"| {m.name} | {m.shown()} | {m.target or ''} | {result} |")
    lines.append("")
    for note in report.notes:
        lines += [f"> {note}", ""]
    for chart in report.charts:
        image = _draw(chart, out_dir / f"{chart.name}.png")
        if image is not None:
            lines += [f"## {chart.title}", "", f"![{chart.title}]({image.name})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _draw(chart: Chart, path: Path) -> Path | None:
    """One PNG per chart (matplotlib, headless); None when the chart has no points."""
    if not any(chart.series.values()):
        return None
    try:
        import matplotlib  # noqa: PLC0415 - heavy, needed only when writing a report
    except ImportError:
        raise ChartsUnavailableError(
            "charts need matplotlib: install the `report` extra (uv sync --extra report)"
        ) from None
    matplotlib.use("Agg")
    from matplotlib import pyplot  # noqa: PLC0415

    figure, axes = pyplot.subplots(figsize=(8, 4), dpi=100)
    try:
        if chart.bars:
            [(name, points)] = chart.series.items()
            axes.barh([chart.categories[int(x)] for x, _ in points], [y for _, y in points])
            axes.set_xlabel(chart.y_label)
            axes.invert_yaxis()
        else:
            for name, points in sorted(chart.series.items()):
                axes.plot([x for x, _ in points], [y for _, y in points], label=name)
            axes.set_xlabel(chart.x_label)
            axes.set_ylabel(chart.y_label)
            axes.legend(loc="best", fontsize="small")
            axes.grid(True, alpha=0.3)
        axes.set_title(chart.title)
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        pyplot.close(figure)
    return path
