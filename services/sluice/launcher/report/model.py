"""What a report holds, whatever it was computed from: measures judged against targets,
charts, and notes on what could not be measured."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Measure:
    """One figure; `target` and `ok` are None when there is nothing to judge it against."""

    name: str
    value: float | None
    unit: str
    target: str | None = None
    ok: bool | None = None

    def shown(self) -> str:
        """The value in its unit, or "no data"."""
        if self.value is None:
            return "no data"
        if self.unit == "%":
            return f"{self.value:.3f} %"
        if self.unit in ("s", "cores", "ms"):
            return f"{self.value:.3f} {self.unit}"
        if self.unit == "MB":
            return f"{self.value:.1f} MB"
        return f"{self.value:g} {self.unit}".rstrip()


@dataclass(frozen=True)
class Chart:
    """Series of (x, y) points drawn on one set of axes; x is seconds or a category index."""

    name: str
    title: str
    y_label: str
    series: dict[str, list[tuple[float, float]]]
    x_label: str = "minutes before the end"
    bars: bool = False
    categories: tuple[str, ...] = ()


@dataclass
class Report:
    """A titled set of measures and charts."""

    title: str
    period: str
    measures: list[Measure] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No judged measure failed (unjudged ones do not count either way)."""
        return all(m.ok is not False for m in self.measures)
