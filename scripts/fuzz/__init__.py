"""`make fuzz`: hostile and clumsy requests through the edge gateway, and what they do to
everyone else (issue 8).

Seeded (the seed is printed; `--seed` replays a run), paced under the gateway's rate limits
(mesh.yaml `gateway.per_client_rate_limit`, `local_rate_limit`: the fuzzer is one client), each
request on its own connection and bounded in time:

- random bytes and protobuf-shaped bytes, well framed as gRPC, to exposed methods, methods the
  gateway does not expose, and methods that do not exist;
- broken gRPC framing: no body, an empty DATA frame, a 3-byte header, a length prefix that
  lies, two messages on a unary call, the compressed flag set, trailing garbage;
- mangled paths: query strings, `..`, `//`, percent-escapes, a reflection or health prefix
  climbing out with `..`;
- random JSON and not-JSON over HTTP/1.1 to the JSON transcoding, with application/json,
  text/plain, no content-type and others;
- wrong HTTP verbs (GET, PUT, DELETE, ...) on method paths, over HTTP/1.1 and HTTP/2;
- raw HTTP/2 (the h2 library, its own checks off): header names with underscores or capitals,
  huge and many headers, missing pseudo-headers, odd grpc-timeout, a reset mid-message, a
  request that never ends, DATA after END_STREAM, unknown and malformed frames.

Each outcome is classified (gRPC status from trailers or a trailers-only answer, the JSON
status of the transcoder, HTTP status, reset, unanswered) and the run checked: 0 UNKNOWN, 0 unary
calls unanswered past the edge's timeout (streams excluded), 0 replicas ejected, 0 processes
crashed, every log bounded per reason (scripts.fuzz.logs); it reports how many requests reached
an app. Exit status 1 on a violation.

Usage: python -m scripts.fuzz [--count 10000] [--seed N] [--state-dir var]
       make fuzz FUZZ_ARGS='--count 2000 --seed 7'
Without --state-dir it starts a mesh of its own in a temporary directory, and stops it.
"""
