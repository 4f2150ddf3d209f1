"""Medians over repeats, ratios to machinery-aio, the printed table and the JSON document."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

LIBRARY = "machinery-aio"


@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    digits: int


METRICS = [
    Metric("enqueue_one", "enqueue 1-by-1/s", 0),
    Metric("enqueue_batch", "enqueue batch/s", 0),
    Metric("drain_1", "drain 1 proc/s", 0),
    Metric("drain_2", "drain 2 procs/s", 0),
    Metric("p50_ms", "p50 ms", 2),
    Metric("p99_ms", "p99 ms", 2),
    Metric("rss_mib", "RSS MB", 1),
    Metric("cpu_us_per_task", "CPU µs/task", 0),
    Metric("server_cpu_us_per_task", "server CPU µs/task", 0),
]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's runs -> status, version and the median of every figure."""
    good = [
        r
        for r in runs
        if "unavailable" not in r
        and "error" not in r
        and any(isinstance(r.get(m.key), int | float) for m in METRICS)
    ]
    first = runs[0] if runs else {}
    out: dict[str, Any] = {
        "version": next((r["version"] for r in runs if r.get("version")), ""),
        "batch_api": first.get("batch_api", ""),
        "notes": first.get("notes", ""),
        "runs": runs,
        "median": {},
    }
    if not good:
        reason = next((r.get("unavailable") for r in runs if r.get("unavailable")), None)
        out["status"] = (
            f"unavailable: {reason}"
            if reason
            else f"error: {next((r.get('error') for r in runs if r.get('error')), 'no run')}"
        )
        return out
    failures = sorted({f"{phase}: {msg}" for r in runs for phase, msg in r.get("errors", {}).items()})
    if failures or len(good) < len(runs):
        out["status"] = f"partial ({len(good)} of {len(runs)} runs measured); " + "; ".join(
            failures or ["a run failed"]
        )
    else:
        out["status"] = "ok"
    out["failed"] = []
    for metric in METRICS:
        values = [r[metric.key] for r in good if isinstance(r.get(metric.key), int | float)]
        out["median"][metric.key] = statistics.median(values) if values else None
        offered = not (metric.key == "drain_2" and good[0].get("in_process"))
        if offered and not any(metric.key in r for r in good):
            out["failed"].append(metric.key)
    return out


def add_ratios(results: dict[str, dict[str, Any]]) -> None:
    """Each peer's figure divided by machinery-aio's on the same broker (``ratio_to_machinery``)."""
    for name, summary in results.items():
        library, broker = name.split("/", 1)
        base = results.get(f"{LIBRARY}/{broker}")
        summary["ratio_to_machinery"] = {}
        if library == LIBRARY or base is None or not base["median"]:
            continue
        for metric in METRICS:
            mine, theirs = summary["median"].get(metric.key), base["median"].get(metric.key)
            if mine is not None and theirs:
                summary["ratio_to_machinery"][metric.key] = mine / theirs


def _cell(value: float | None, ratio: float | None, digits: int, failed: bool = False) -> str:
    if value is None:
        return "failed" if failed else "n/a"
    text = f"{value:,.{digits}f}"
    return f"{text} ({ratio:.2f}x)" if ratio is not None else text


def table(results: dict[str, dict[str, Any]]) -> str:
    """A fixed-width table: one row per target, every figure, peers with their ratio in brackets."""
    headers = ["target", "version", *(m.header for m in METRICS)]
    rows: list[list[str]] = []
    notes: list[str] = []
    for name, summary in results.items():
        if summary["status"] != "ok":
            notes.append(f"{name}: {summary['status']}")
        if not summary["median"]:
            rows.append([name, summary["version"] or "-", *(["-"] * len(METRICS))])
            continue
        ratios = summary.get("ratio_to_machinery", {})
        rows.append(
            [
                name,
                summary["version"],
                *(
                    _cell(
                        summary["median"].get(m.key), ratios.get(m.key), m.digits, m.key in summary["failed"]
                    )
                    for m in METRICS
                ),
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs)

    out = [line(headers), "-+-".join("-" * w for w in widths), *(line(r) for r in rows)]
    out.append(
        "(x) = the peer's figure divided by machinery-aio's on the same broker; "
        "n/a = not offered by the library or the broker; failed: see the notes below"
    )
    out.extend(notes)
    return "\n".join(out)


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """The same table in Markdown, for docs/performance.md."""
    headers = ["target", "version", *(m.header for m in METRICS)]
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, summary in results.items():
        ratios = summary.get("ratio_to_machinery", {})
        if summary["median"]:
            failed = summary["failed"]
            cells = [
                _cell(summary["median"].get(m.key), ratios.get(m.key), m.digits, m.key in failed)
                for m in METRICS
            ]
        else:
            cells = [summary["status"]] + [""] * (len(METRICS) - 1)
        out.append("| " + " | ".join([name, summary["version"] or "-", *cells]) + " |")
    return "\n".join(out)
