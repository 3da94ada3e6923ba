-- CarrierX status callbacks with a provider id unique to each request (thread, counter, random);
-- with DUPLICATES=1 one request in five repeats an earlier id of the same thread.
local counter = 0
local thread_id = 0
local sent = {}
local dup_share = tonumber(os.getenv("DUPLICATES") or "0")

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  math.randomseed(os.time() * 1000 + id)
  prefix = string.format("%d-%d-", id, math.random(1, 2^30))
end

function request()
  counter = counter + 1
  local sid
  if dup_share > 0 and counter > 5 and counter % 5 == 0 then
    sid = prefix .. tostring(math.random(1, counter - 1))
  else
    sid = prefix .. tostring(counter)
  end
  local body = '{"message_sid":"' .. sid .. '","direction":"outbound","status":"delivered",'
    .. '"from":"15162065575","to":"15162065574","message_segments":1,"price":"0.0025",'
    .. '"date_status_changed":"2024-06-14T00:00:00.000Z","type":"sms"}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    "JSON {\"requests\":%d,\"duration_us\":%d,\"errors_status\":%d,\"errors_other\":%d,"
    .. "\"p50_us\":%d,\"p99_us\":%d,\"mean_us\":%.1f}\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
