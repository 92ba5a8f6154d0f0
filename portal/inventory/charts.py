"""Telemetry of a host's devices as charts for its page: reads, then pure geometry.

Readings (resolution 0) come every PORTAL_TELEMETRY_SECONDS and are kept
PORTAL_TELEMETRY_RAW_HOURS; each older full hour is one hourly row instead, in the same
transaction that deletes its readings, so an hour is readings or a rollup, never both (the
retention task). That is why a bucket can be built from both kinds of row at once: a reading
weighs one, a rollup its `readings`.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise

from django.conf import settings
from django.db.models import F, FloatField, Max, Q, Sum, Value
from django.db.models.functions import Coalesce, ExtractMinute, Floor, TruncHour
from django.utils import timezone

from portal.inventory.models import Accelerator, DeviceSample, Host

# The chart's drawing area, in SVG user units; the template adds margins for the axes.
WIDTH = 600
HEIGHT = 120
# Points further apart than this many empty buckets are not joined: the line breaks.
GAP_BUCKETS = 2


@dataclass(frozen=True)
class Span:
    name: str
    label: str  # "the last hour", for titles and links
    length: timedelta
    # The width of one point: None for readings as they are (one every
    # PORTAL_TELEMETRY_SECONDS); otherwise readings are averaged into buckets of this width,
    # which divides an hour.
    bucket: timedelta | None

    @property
    def step(self) -> timedelta:
        return self.bucket or timedelta(seconds=settings.PORTAL_TELEMETRY_SECONDS)


SPANS = {
    "hour": Span("hour", "the last hour", timedelta(hours=1), None),
    "day": Span("day", "the last 24 hours", timedelta(hours=24), timedelta(minutes=10)),
    "week": Span("week", "the last 7 days", timedelta(days=7), timedelta(hours=1)),
}
DEFAULT_SPAN = "hour"


@dataclass(frozen=True)
class Point:
    """A reading, or the readings of one bucket: means, and maxima where the name says so."""

    at: datetime  # the reading's time, or the start of its bucket
    utilization_pct: float | None
    utilization_max_pct: float | None
    memory_used_mib: int | None  # max
    temperature_c: float | None  # max


@dataclass
class DeviceSeries:
    accelerator: Accelerator
    points: list[Point] = field(default_factory=list)


def device_series(host: Host, span: Span, *, now: datetime | None = None) -> list[DeviceSeries]:
    """The points of each non-retired accelerator of the host over the span, oldest first.

    One query for all the devices; the host's accelerators are read from its prefetch, if any.
    """
    now = now or timezone.now()
    accelerators = sorted(
        (a for a in host.accelerators.all() if not a.retired), key=lambda a: a.index
    )
    series = {a.pk: DeviceSeries(a) for a in accelerators}
    if not series:
        return []
    start = window_start(span, now)
    samples = DeviceSample.objects.filter(accelerator__in=list(series), at__gte=start, at__lte=now)
    if span.bucket is None:
        rows = samples.filter(resolution=DeviceSample.Resolution.READING).order_by(
            "accelerator_id", "at"
        )
        for row in rows.values_list(
            "accelerator_id", "at", "utilization_pct", "memory_used_mib", "temperature_c"
        ):
            pk, at, utilization, memory, temperature = row
            series[pk].points.append(Point(at, utilization, utilization, memory, temperature))
    else:
        for pk, point in _bucketed(samples, span.bucket):
            series[pk].points.append(point)
    return list(series.values())


def window_start(span: Span, now: datetime) -> datetime:
    """Where the span's chart begins: bucketed spans start on a whole bucket (in UTC)."""
    start = now - span.length
    if span.bucket is None:
        return start
    width = span.bucket.total_seconds()
    return datetime.fromtimestamp(start.timestamp() // width * width, tz=UTC)


def _bucketed(samples, bucket: timedelta):
    """(accelerator pk, Point) per bucket, in order: grouped by the database, in UTC.

    A bucket is (the hour, which part of it): portable to SQLite and PostgreSQL, unlike an
    epoch. Means are weighted by the readings each row stands for, NULLs left out.
    """
    minutes = int(bucket.total_seconds() // 60)
    rows = (
        samples.annotate(
            hour=TruncHour("at", tzinfo=UTC),
            part=Floor(ExtractMinute("at", tzinfo=UTC) / Value(minutes)),
        )
        .values("accelerator_id", "hour", "part")
        .annotate(
            utilization_sum=Sum(F("utilization_pct") * F("readings"), output_field=FloatField()),
            utilization_n=Sum("readings", filter=Q(utilization_pct__isnull=False)),
            utilization_max=Max(
                Coalesce("utilization_max_pct", "utilization_pct"), output_field=FloatField()
            ),
            memory=Max("memory_used_mib"),
            temperature=Max("temperature_c"),
        )
        .order_by("accelerator_id", "hour", "part")
    )
    for row in rows:
        n = row["utilization_n"]
        at = row["hour"] + timedelta(minutes=int(row["part"]) * minutes)
        utilization = row["utilization_sum"] / n if n else None
        yield (
            row["accelerator_id"],
            Point(at, utilization, row["utilization_max"], row["memory"], row["temperature"]),
        )


# -- Geometry: pure functions of the points ----------------------------------------------------


@dataclass(frozen=True)
class Summary:
    latest: float
    mean: float
    max: float


@dataclass(frozen=True)
class Metric:
    key: str  # "utilization", "memory", "temperature": the CSS class of its line
    label: str
    polylines: list[str]  # one SVG points string per unbroken stretch
    summary: Summary | None  # in the metric's own unit (%, MiB, °C); None without data
    description: str  # the summary in words, for the legend and the SVG's <desc>


@dataclass(frozen=True)
class Chart:
    accelerator: Accelerator
    start: datetime
    end: datetime
    metrics: list[Metric]

    @property
    def has_data(self) -> bool:
        return any(m.summary for m in self.metrics)


def host_charts(host: Host, span: Span, *, now: datetime | None = None) -> list[Chart]:
    """A chart per non-retired accelerator of the host: what its page shows (one query)."""
    now = now or timezone.now()
    return [chart(series, span, now=now) for series in device_series(host, span, now=now)]


def chart(series: DeviceSeries, span: Span, *, now: datetime) -> Chart:
    """The drawing of one device's series over the span ending now."""
    start = window_start(span, now)
    acc = series.accelerator
    points = series.points
    half = span.bucket / 2 if span.bucket else timedelta(0)
    times = [p.at + half for p in points]  # a bucket is drawn at its middle
    step = max(span.step, cadence(times))

    def metric(key, label, values, scale, unit, maxima=None):
        lines = polylines(times, values, start=start, end=now, step=step, scale=scale)
        summary = summarize(values, maxima)
        return Metric(key, label, lines, summary, f"{label}: {_describe(summary, unit)}")

    total = acc.memory_mib
    metrics = [
        metric(
            "utilization",
            "Utilisation",
            [p.utilization_pct for p in points],
            _identity,
            _percent,
            maxima=[p.utilization_max_pct for p in points],
        ),
        metric(
            "memory",
            "Memory used",
            [p.memory_used_mib for p in points],
            lambda mib: 100 * mib / total if total else 0,
            lambda mib: _memory(mib, total),
        ),
        metric(
            "temperature",
            "Temperature",
            [p.temperature_c for p in points],
            _identity,
            lambda c: f"{_number(c)} °C",
        ),
    ]
    return Chart(acc, start, now, metrics)


def cadence(times: list[datetime]) -> timedelta:
    """The usual time between two points: the median interval (zero for fewer than two).

    A host read less often than PORTAL_TELEMETRY_SECONDS (a slow loop, a busy worker, data
    loaded every ten minutes) still has its readings joined into lines, not drawn as dots;
    a gap of more than GAP_BUCKETS usual intervals still breaks the line."""
    gaps = sorted(b - a for a, b in pairwise(times) if b > a)
    return gaps[(len(gaps) - 1) // 2] if gaps else timedelta(0)


def polylines(
    times: list[datetime],
    values: list[float | None],
    *,
    start: datetime,
    end: datetime,
    step: timedelta,
    scale,
) -> list[str]:
    """SVG points strings, one per stretch without a gap; `scale` maps a value to 0-100.

    NULL values are skipped; a gap of more than GAP_BUCKETS empty steps breaks the line. A
    stretch of one point becomes a short tick, since a one-point polyline draws nothing.
    """
    length = (end - start).total_seconds() or 1.0
    stretches: list[list[tuple[float, float]]] = []
    previous = None
    for at, value in zip(times, values, strict=True):
        if value is None:
            continue
        if previous is None or round((at - previous) / step) - 1 > GAP_BUCKETS:
            stretches.append([])
        previous = at
        x = _clamp(WIDTH * (at - start).total_seconds() / length, 0, WIDTH)
        y = HEIGHT - HEIGHT * _clamp(scale(value), 0, 100) / 100
        stretches[-1].append((x, y))
    lines = []
    for stretch in stretches:
        if len(stretch) == 1:
            x, y = stretch[0]
            stretch = [(max(x - 1, 0), y), (min(x + 1, WIDTH), y)]
        lines.append(" ".join(f"{x:.1f},{y:.1f}" for x, y in stretch))
    return lines


def summarize(values: list[float | None], maxima: list[float | None] | None = None):
    """Latest, mean and maximum of the values that are not NULL; None if there is none.

    The mean is of the points (readings, or equal buckets); the maximum is of `maxima` where
    the rows keep one (an hourly rollup's peak is above its mean).
    """
    present = [v for v in values if v is not None]
    if not present:
        return None
    peaks = [v for v in (maxima or []) if v is not None] + present
    return Summary(latest=present[-1], mean=sum(present) / len(present), max=max(peaks))


def _describe(summary: Summary | None, unit) -> str:
    if summary is None:
        return "no readings."
    return f"latest {unit(summary.latest)}, mean {unit(summary.mean)}, maximum {unit(summary.max)}."


def _number(value: float) -> str:
    """12 or 12.5: one decimal at most, none when it is zero."""
    text = f"{value:.1f}"
    return text.removesuffix(".0")


def _percent(value: float) -> str:
    return f"{_number(value)}%"


def _memory(mib: float, total_mib: int) -> str:
    text = f"{_number(mib / 1024)} GiB"
    return f"{text} ({_number(100 * mib / total_mib)}%)" if total_mib else text


def _identity(value: float) -> float:
    return value


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


# -- What runs on the devices now --------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    device: str
    key: tuple  # (vendor, index), to match the devices a user holds
    pid: int | None
    user: str
    used_memory_mib: int | None
    system: bool


def current_processes(host: Host) -> list[Process]:
    """The processes of the last telemetry answer (Host.telemetry), by device.

    The answer is JSON from the host's agent: read defensively, never trusted to be well formed.
    """
    # Keyed to match what the telemetry says, which may be anything.
    names: dict[tuple[object, object], str] = {
        (a.vendor, a.index): f"#{a.index} {a.model}" for a in host.accelerators.all()
    }
    telemetry = host.telemetry if isinstance(host.telemetry, dict) else {}
    processes = []
    for sample in _dicts(telemetry.get("samples")):
        vendor, index = sample.get("vendor"), sample.get("index")
        device = names.get((vendor, index)) or f"{vendor} #{index}"
        for process in _dicts(sample.get("processes")):
            processes.append(
                Process(
                    device=device,
                    key=(vendor, index),
                    pid=process.get("pid"),
                    user=str(process.get("user") or "unknown"),
                    used_memory_mib=process.get("used_memory_mib"),
                    system=bool(process.get("system")),
                )
            )
    return processes


def probe_errors(host: Host) -> list[dict]:
    """The vendors whose tool failed at the last telemetry answer: {"vendor", "message"}."""
    telemetry = host.telemetry if isinstance(host.telemetry, dict) else {}
    return [
        {"vendor": str(e.get("vendor", "")), "message": str(e.get("message", ""))}
        for e in _dicts(telemetry.get("errors"))
    ]


def _dicts(value) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
