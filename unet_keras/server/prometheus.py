"""Request metrics under TensorFlow Serving's names, as its Prometheus page shows them.

`:tensorflow:serving:request_count{model_name,status}` counts every Predict (gRPC) and
every REST call; `:tensorflow:serving:request_latency{model_name,API,entrypoint}` is the
histogram of successful ones in microseconds, with TF Serving's buckets (10 x 1.8^i, 33 of
them); `:tensorflow:serving:model_warmup_latency{model_path,status}` times each warmup.
Sources: servables/tensorflow/util.cc, saved_model_warmup_util.cc,
util/prometheus_exporter.cc (names, label escaping, the page's layout).
"""

from __future__ import annotations

import bisect
import dataclasses
import threading

# monitoring::Buckets::Exponential(10, 1.8, 33); the last bucket reaches +Inf.
BUCKET_LIMITS = tuple(10 * 1.8**i for i in range(33))
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

_COUNTERS = {"request_count": ":tensorflow:serving:request_count"}
_HISTOGRAMS = {
    "request_latency": (
        ":tensorflow:serving:request_latency",
        ("model_name", "API", "entrypoint"),
    ),
    "model_warmup_latency": (
        ":tensorflow:serving:model_warmup_latency",
        ("model_path", "status"),
    ),
}


@dataclasses.dataclass
class _Histogram:
    buckets: list[int] = dataclasses.field(default_factory=lambda: [0] * (len(BUCKET_LIMITS) + 1))
    total: float = 0.0

    def add(self, value: float) -> None:
        self.buckets[bisect.bisect_left(BUCKET_LIMITS, value)] += 1
        self.total += value


class Metrics:
    """The counters and histograms of one server, safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._histograms: dict[str, dict[tuple[str, ...], _Histogram]] = {
            name: {} for name in _HISTOGRAMS
        }

    def request(
        self, model: str, api: str, entrypoint: str, status: str, microseconds: float
    ) -> None:
        """Counts a request by model and status; times it when it succeeded."""
        with self._lock:
            key = (model, status)
            self._counts[key] = self._counts.get(key, 0) + 1
            if status == "OK":
                cells = self._histograms["request_latency"]
                cells.setdefault((model, api, entrypoint), _Histogram()).add(microseconds)

    def warmup(self, model_path: str, status: str, microseconds: float) -> None:
        """Times a version's warmup."""
        with self._lock:
            cells = self._histograms["model_warmup_latency"]
            cells.setdefault((model_path, status), _Histogram()).add(microseconds)

    def page(self) -> str:
        """The Prometheus text page, as TF Serving's PrometheusExporter writes it."""
        lines = []
        with self._lock:
            if self._counts:
                name = _COUNTERS["request_count"]
                lines.append(f"# TYPE {name} counter")
                for (model, status), count in sorted(self._counts.items()):
                    labels = f'model_name="{_escape(model)}",status="{status}"'
                    lines.append(f"{name}{{{labels}}} {count}")
            for key, (name, label_names) in _HISTOGRAMS.items():
                cells = self._histograms[key]
                if not cells:
                    continue
                lines.append(f"# TYPE {name} histogram")
                for values, histogram in sorted(cells.items()):
                    labels = ",".join(
                        f'{label}="{_escape(value)}"'
                        for label, value in zip(label_names, values, strict=True)
                    )
                    cumulative = 0
                    for limit, count in zip(
                        (*BUCKET_LIMITS, None), histogram.buckets, strict=True
                    ):
                        cumulative += count
                        bound = "+Inf" if limit is None else f"{limit:.6g}"
                        lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {cumulative}')
                    lines.append(f"{name}_sum{{{labels}}} {histogram.total:.6g}")
                    lines.append(f"{name}_count{{{labels}}} {cumulative}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    """prometheus_exporter.cc's SanitizeLabelValue."""
    return value.replace("\\", "\\\\").replace('"', '\\"')
