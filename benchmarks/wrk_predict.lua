-- wrk script for benchmarks/serving.py: POSTs the JSON bodies of $WRK_BODIES (one per line)
-- in turn, and prints one JSON line of results (milliseconds) when the run ends.
local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES")) do bodies[#bodies + 1] = line end
local sent = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  sent = sent + 1
  return wrk.format(nil, nil, nil, bodies[(sent % #bodies) + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  local distribution = {}
  for _, q in ipairs({"1", "5", "10", "25", "50", "75", "90", "95", "99", "99.9"}) do
    distribution[#distribution + 1] = string.format('"%s": %.4f', q, latency:percentile(tonumber(q)) / 1e3)
  end
  io.write(string.format(
    '{"p50_ms": %.4f, "p99_ms": %.4f, "mean_ms": %.4f, "requests": %d, "errors": %d, ' ..
    '"throughput_rps": %.3f, "distribution_ms": {%s}}\n',
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, latency.mean / 1e3, summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout, summary.requests / (summary.duration / 1e6),
    table.concat(distribution, ", ")))
end
