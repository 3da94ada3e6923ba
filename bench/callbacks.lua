-- Real callback formats of four providers in turn, each with a provider id unique to the request
-- (thread, counter, random): CarrierX's SMS object, Swift's sms_dlr, 23 Telecom's delivery
-- webhook (JSON POSTs) and the Properties API's receipt (a GET with a query string).
-- ROUTED=1 sends each to its provider's /callbacks/<provider>/<CALLBACK_TOKEN> route; otherwise
-- every request is a POST of the same bodies to wrk's URL (the ceiling and naive-insert handlers).
-- DUPLICATES=1: one request in five repeats an earlier one of the same thread.
local counter = 0
local thread_id = 0
local dup_share = tonumber(os.getenv("DUPLICATES") or "0")
local routed = os.getenv("ROUTED") == "1"
local token = os.getenv("CALLBACK_TOKEN") or ""

local function callback(provider)
  return "/callbacks/" .. provider .. "/" .. token
end

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  math.randomseed(os.time() * 1000 + id)
  prefix = string.format("%d-%d-", id, math.random(1, 2^30))
end

local json = {["Content-Type"] = "application/json"}
local form = {["Content-Type"] = "application/x-www-form-urlencoded"}

local function carrierx(sid)
  return "POST", callback("carrierx"), json,
    '{"message_sid":"' .. sid .. '","direction":"outbound","status":"delivered",'
    .. '"from":"15162065575","to":"15162065574","message_segments":1,"price":"0.0025",'
    .. '"date_status_changed":"2024-06-14T00:00:00.000Z","type":"sms"}'
end

local function swift(sid)
  return "POST", callback("swift"), json,
    '{"delivery_status":"delivered","from":"12003004000","id":"dlr-' .. sid .. '",'
    .. '"sms":{"id":"' .. sid .. '"},"timestamp":"2024-06-14T00:00:00.000000Z",'
    .. '"to":"12003004001","type":"sms_dlr"}'
end

local function telecom23(sid)
  return "POST", callback("telecom23"), json,
    '{"message_id":"' .. sid .. '","recipient":"+14155551234","sender_id":"MyApp",'
    .. '"status":"DELIVRD","status_code":"000","num_parts":1,"cost":0.0085,'
    .. '"timestamp":"2026-02-13T10:30:04Z"}'
end

local function properties(sid)
  local query = "Action=Webhook&Event=Message.DeliveryReceiptReceived"
    .. "&Account.Sid=AG5TYYD8R2ZH44TAJM3J6FEE2V&Property.Sid=S7DNCEKTAEFGEPNABPVBXW5YVH"
    .. "&Message.Sid=" .. sid .. "&Message.From=%2B61499111222&Message.To=%2B61488023555"
    .. "&Message.Text=Your+booking+is+confirmed"
  if routed then
    return "GET", callback("properties") .. "?" .. query, {}, nil
  end
  return "POST", nil, form, query
end

local formats = {carrierx, swift, telecom23, properties}

function request()
  counter = counter + 1
  local n = counter
  if dup_share > 0 and counter > 5 and counter % 5 == 0 then
    n = math.random(1, counter - 1)
  end
  local method, path, headers, body = formats[n % #formats + 1](prefix .. tostring(n))
  if not routed then
    method, path = "POST", nil
  end
  return wrk.format(method, path, headers, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    "JSON {\"requests\":%d,\"duration_us\":%d,\"errors_status\":%d,\"errors_other\":%d,"
    .. "\"p50_us\":%d,\"p99_us\":%d,\"mean_us\":%.1f}\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
