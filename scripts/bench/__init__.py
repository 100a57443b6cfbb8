"""`make bench`: what the sidecars cost, measured on this machine.

One run, on loopback and Unix sockets only, bounded in request count and time, against the mesh
exactly as `make up` runs it (shopmesh.local: every app on its Unix socket behind its Envoy
sidecar, Envoy with --concurrency 1, real certificates from shopmesh.pki, configs from
shopmesh.envoy) in a temporary state directory:

1. Unary `users.GetUser` (a SQLite read of a user created first), driven by h2load:
   - direct: straight at the users app's own Unix socket;
   - mesh: into orders' sidecar egress socket -> mTLS -> users' sidecar -> the same app.
   h2load dials Unix sockets itself (`--base-uri=unix:<path>`), so both paths use the exact
   rendered configs: no bench-only listener. The maximum throughput of each path (median of
   alternating rounds) and their ratio; then p50/p99 of both at 25 % of the direct maximum
   (open loop, h2load --rps) and what the two sidecars add.
2. Checkout: PlaceOrder through the edge gateway from N concurrent grpc.aio workers, a fixed
   number of orders with unique idempotency keys: orders/s, p50/p99 and every outcome.
3. The outbox relay's lag at that checkout rate (scripts.bench.relay).
4. Overload (scripts.bench.overload): with the gateway's rate limits switched off, the checkout
   capacity measured open loop (the highest rate whose admitted p99 stays within a bound), then
   PlaceOrder at 5x it: the admitted p99 against the low-load p99, every refusal's reason and its
   time at the gateway, crashes, and the orders' consistency afterwards.
5. The resident memory (VmRSS, and the peak VmHWM) of every Envoy after the run.

h2load counts an HTTP 200 as a success even when grpc-status is not 0 (Envoy's own gRPC answers,
such as a circuit-breaker overflow, are HTTP 200 too). So the OK calls are counted separately:
every OK GetUser answer is the same GetUserResponse frame and an error carries none, so the DATA
bytes h2load received divided by that frame's size is the number of OK calls; the sidecars'
access logs give every call's grpc-status as a cross-check.

Usage: python -m scripts.bench [--seconds 6] [--orders 200] [--workers 8] [--keep]
       python -m scripts.bench --overload (or --relay, --disk, --tracing: that part alone)
       make bench BENCH_ARGS='--seconds 10'
Run it on an otherwise idle machine: it reports (and warns about) the CPU time other processes
used during the run.
"""
