"""Prometheus metrics of ``edgeclip serve``, written in the text exposition format (0.0.4).

Everything is updated from the event loop thread only, so there are no locks. Gauges that
describe the present (queue depth, model loaded, memory) are read when ``/metrics`` is asked.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

Labels = tuple[tuple[str, str], ...]


def rss_bytes(pid: int | None = None) -> int | None:
    """Resident set size of a process (this one by default) from /proc, or None off Linux."""
    try:
        with open(f"/proc/{pid or 'self'}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in labels]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class Histogram:
    """Cumulative-bucket histogram keyed by label values."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.buckets = tuple(float(b) for b in buckets)
        self.counts: dict[Labels, list[int]] = {}
        self.sums: dict[Labels, float] = defaultdict(float)

    def observe(self, labels: Labels, value: float) -> None:
        row = self.counts.setdefault(labels, [0] * (len(self.buckets) + 1))
        row[bisect.bisect_left(self.buckets, value)] += 1  # the last slot is +Inf only
        self.sums[labels] += value

    def lines(self, name: str) -> list[str]:
        out = []
        for labels in sorted(self.counts):
            running = 0
            row = self.counts[labels]
            for bound, count in zip((*self.buckets, float("inf")), row):
                running += count
                le = 'le="' + _num(bound) + '"'
                out.append(f"{name}_bucket{_labels(labels, le)} {running}")
            out.append(f"{name}_sum{_labels(labels)} {_num(self.sums[labels])}")
            out.append(f"{name}_count{_labels(labels)} {running}")
        return out


class Metrics:
    """The counters and histograms of one server; ``render`` writes them with live gauges."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests: dict[Labels, int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self.inputs: dict[Labels, int] = defaultdict(int)
        self.in_flight: dict[Labels, int] = defaultdict(int)
        self.model_loads = 0
        self.model_unloads = 0
        self.image_tower_unloads = 0

    def request_started(self, endpoint: str) -> None:
        self.in_flight[(("endpoint", endpoint),)] += 1

    def request_finished(self, endpoint: str, status: int, seconds: float) -> None:
        self.in_flight[(("endpoint", endpoint),)] -= 1
        self.requests[(("endpoint", endpoint), ("status", str(status)))] += 1
        self.latency.observe((("endpoint", endpoint),), seconds)

    def batch_ran(self, modality: str, size: int) -> None:
        self.batch_sizes.observe((("modality", modality),), size)
        self.inputs[(("modality", modality),)] += size

    def render(self, gauges: dict[str, tuple[str, dict[Labels, float]]]) -> str:
        """The exposition text; ``gauges`` maps a name to (help, {labels: value})."""
        blocks: list[tuple[str, str, str, list[str]]] = [
            ("edgeclip_requests_total", "counter", "HTTP requests by endpoint and status",
             _rows("edgeclip_requests_total", self.requests)),
            ("edgeclip_request_duration_seconds", "histogram", "HTTP request latency",
             self.latency.lines("edgeclip_request_duration_seconds")),
            ("edgeclip_batch_size", "histogram", "inputs per model call of the dynamic batcher",
             self.batch_sizes.lines("edgeclip_batch_size")),
            ("edgeclip_inputs_total", "counter", "inputs embedded, by modality",
             _rows("edgeclip_inputs_total", self.inputs)),
            ("edgeclip_requests_in_flight", "gauge", "HTTP requests being served",
             _rows("edgeclip_requests_in_flight", self.in_flight)),
            ("edgeclip_model_loads_total", "counter", "times the model was loaded",
             [f"edgeclip_model_loads_total {self.model_loads}"]),
            ("edgeclip_model_unloads_total", "counter", "times the model was unloaded",
             [f"edgeclip_model_unloads_total {self.model_unloads}"]),
            ("edgeclip_image_tower_unloads_total", "counter",
             "times the image tower alone was unloaded (--image-idle-ttl)",
             [f"edgeclip_image_tower_unloads_total {self.image_tower_unloads}"]),
        ]  # fmt: skip
        for name, (help_, values) in gauges.items():
            blocks.append((name, "gauge", help_, _rows(name, values)))
        out = []
        for name, kind, help_, lines in blocks:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)
        return "\n".join(out) + "\n"


def _rows(name: str, values: dict[Labels, Any]) -> list[str]:
    return [f"{name}{_labels(labels)} {_num(v)}" for labels, v in sorted(values.items())]
