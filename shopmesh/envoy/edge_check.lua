-- The gateway's first look at a call from outside, before it costs an upstream anything.
-- Rendered with two tables in front of this text (shopmesh/envoy/edge.py):
--   ONE_MESSAGE[path] = true  for every routed method whose request is a single message
--   REPLIES[reason] = {status=..., grpc_status=..., message=..., details=..., json=...}
--
-- 1. A JSON caller must say it sends JSON: the transcoder would read any other body as JSON.
-- 2. A unary gRPC call must carry exactly one whole length-prefixed message. A body that ends
--    early is never answered by the Python server, so each such call would hold an upstream
--    slot until the route timeout; a second message is refused the same way.

local function refuse(handle, reason, grpc)
  local reply = REPLIES[reason]
  if grpc then
    handle:respond({
      [":status"] = "200",
      ["content-type"] = "application/grpc",
      ["grpc-status"] = reply.grpc_status,
      ["grpc-message"] = reply.message,
      ["grpc-status-details-bin"] = reply.details,
    }, "")
  else
    handle:respond({[":status"] = reply.status, ["content-type"] = "application/json"}, reply.json)
  end
end

local function is_grpc(content_type)
  return content_type == "application/grpc" or content_type:sub(1, 17) == "application/grpc+"
end

local function is_json(content_type)
  local media = content_type:match("^([^;%s]+)") or ""
  return media:lower() == "application/json"
end

-- The message length a 5-byte gRPC frame header announces (big-endian), or nil when the
-- compressed flag is neither 0 nor 1, or is 1 with no compression named for the call.
local function announced_length(header, encoding)
  local flag, b1, b2, b3, b4 = header:byte(1, 5)
  if flag > 1 or (flag == 1 and (encoding == nil or encoding == "identity")) then
    return nil
  end
  return ((b1 * 256 + b2) * 256 + b3) * 256 + b4
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local content_type = headers:get("content-type") or ""
  if not is_grpc(content_type) then
    if content_type:sub(1, 16) ~= "application/grpc" and not is_json(content_type) then
      refuse(handle, "UNSUPPORTED_MEDIA_TYPE", false)
    end
    return
  end
  if not ONE_MESSAGE[headers:get(":path")] then
    return
  end
  -- Read before body(): the header map cannot be used once the script has waited for the body.
  local encoding = headers:get("grpc-encoding")
  local body = handle:body()
  local size = body and body:length() or 0
  if size < 5 then
    refuse(handle, "MALFORMED_MESSAGE", true)
    return
  end
  local length = announced_length(body:getBytes(0, 5), encoding)
  if length == nil or length ~= size - 5 then
    refuse(handle, "MALFORMED_MESSAGE", true)
  end
end
