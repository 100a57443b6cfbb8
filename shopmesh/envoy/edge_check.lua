-- The gateway's first look at a call from outside, before it costs an upstream anything.
-- Rendered twice (shopmesh/envoy/edge.py), each time with these globals in front of this text:
--   CHECK = "content_type" (every request) or "one_message" (a route's own script, on routes
--           whose request is a single message: routes turn it on, so a request no route takes
--           is answered at once instead of waiting for a body that may never end)
--   REPLIES[reason] = {status=..., grpc_status=..., message=..., details=..., json=...}
--   MAX_REQUEST_BYTES (mesh.yaml gateway.limits.max_request_bytes)
--
-- content_type: a gRPC caller must send gRPC (gRPC-Web arrives here as gRPC: the grpc_web
--   filter runs first); a JSON caller must say it sends JSON, since the transcoder would read
--   any other body as JSON; and a JSON body must not announce more than MAX_REQUEST_BYTES.
-- one_message: a unary gRPC call must carry exactly one whole length-prefixed message. A body
--   that ends early is never answered by the Python server, so each such call would hold an
--   upstream slot until the route timeout; a second message is refused the same way.

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

local function check_content_type(handle)
  local headers = handle:headers()
  local content_type = headers:get("content-type") or ""
  -- gRPC is application/grpc or application/grpc+<codec>. The grpc_web filter before this one
  -- has made gRPC-Web gRPC; what still names grpc-web here is a kind it does not convert
  -- (grpc-web+json): refused in gRPC's way, which such a caller reads.
  if content_type == "application/grpc" or content_type:sub(1, 17) == "application/grpc+" then
    return
  end
  if content_type:sub(1, 16) == "application/grpc" then
    refuse(handle, "UNSUPPORTED_MEDIA_TYPE", true)
  elseif not is_json(content_type) then
    refuse(handle, "UNSUPPORTED_MEDIA_TYPE", false)
  elseif (tonumber(headers:get("content-length") or "0") or 0) > MAX_REQUEST_BYTES then
    -- The transcoder streams JSON into gRPC: no buffer on the way would refuse it.
    refuse(handle, "REQUEST_TOO_LARGE", false)
  end
end

local function check_one_message(handle)
  -- Read before body(): the header map cannot be used once the script has waited for the body.
  local encoding = handle:headers():get("grpc-encoding")
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

function envoy_on_request(handle)
  if CHECK == "one_message" then
    check_one_message(handle)
  else
    check_content_type(handle)
  end
end
