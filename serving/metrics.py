"""Prometheus metrics under TF Serving's names, served at /monitoring/prometheus/metrics.

Latencies are in microseconds, as TF Serving reports them. prometheus_client
appends `_total` to counter names in the exposition.
"""

from prometheus_client import Counter, Gauge, Histogram

_MICROSECONDS = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 50_000,
                 100_000, 250_000, 1_000_000, 5_000_000)

REQUEST_COUNT = Counter(":tensorflow:serving:request_count",
                        "Requests by model and gRPC-style status.",
                        ["model_name", "status", "entrypoint"])
REQUEST_LATENCY = Histogram(":tensorflow:serving:request_latency",
                            "Request latency in microseconds.",
                            ["model_name", "API", "entrypoint"], buckets=_MICROSECONDS)
SERVED_VERSION = Gauge(":tensorflow:serving:served_version",
                       "Newest available version of each model (0 when none).", ["model_name"])
BATCH_SIZE = Histogram(":tensorflow:serving:batching_session:processed_batch_size",
                       "Rows per batch run by the server-side batcher.",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
