-- wrk script: POST the body in $BENCH_BODY_FILE; with BENCH_UNIQUE=1 the "__N__"
-- marker becomes a counter so every request differs. Prints one BENCHJSON line.
local file = assert(io.open(os.getenv("BENCH_BODY_FILE"), "rb"))
local template = file:read("*a")
file:close()

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"

local i, j = template:find("__N__", 1, true)
if os.getenv("BENCH_UNIQUE") == "1" and i then
  local prefix, suffix = template:sub(1, i - 1), template:sub(j + 1)
  local counter = 0
  request = function()
    counter = counter + 1
    return wrk.format(nil, nil, nil, prefix .. counter .. suffix)
  end
elseif i then
  wrk.body = template:sub(1, i - 1) .. "0" .. template:sub(j + 1)
else
  wrk.body = template
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status + e.connect + e.read + e.write + e.timeout))
end
