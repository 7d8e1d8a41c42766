-- Error replies to REST clients in TensorFlow Serving's shape: {"error": "<message>"}.
--
-- Runs before the gRPC-JSON transcoder, so on the way back it sees the transcoded
-- reply ({"code":N,"message":"...","details":[]}). gRPC replies (application/grpc) and
-- successes are left alone. FAILED_PRECONDITION (code 9: an idempotency key reused for
-- another request) becomes 422, not the transcoder's 400. Envoy's own replies (malformed
-- JSON, body too large) skip this filter: the listener's local_reply_config shapes them.

-- The message of a transcoded status, still JSON-escaped and quoted. An escaped quote
-- inside it reads \", so the first unescaped '","details":' ends it.
local function status_message(raw)
  local s = string.find(raw, '"message":"', 1, true)
  if s == nil then return '""' end
  local first = s + 10
  local e = string.find(raw, '","details":', first + 1, true)
  if e == nil then
    e = string.find(raw, '"}', -2, true)
    if e == nil then return '""' end
  end
  return string.sub(raw, first, e)
end

function envoy_on_response(handle)
  local h = handle:headers()
  local status = h:get(':status')
  if status == nil or string.sub(status, 1, 1) == '2' then
    return
  end
  if string.find(h:get('content-type') or '', 'application/json', 1, true) ~= 1 then
    return
  end
  local body = handle:body()
  if body == nil or body:length() == 0 then
    return
  end
  local raw = body:getBytes(0, body:length())
  local code = string.match(raw, '^{"code":(%d+),')
  if code == nil then
    return
  end
  -- body() waited for the whole body: the headers object from before is out of scope.
  h = handle:headers()
  if code == '9' then
    h:replace(':status', '422')
  end
  local out = '{"error":' .. status_message(raw) .. '}'
  body:setBytes(out)
  h:replace('content-length', tostring(#out))
end
