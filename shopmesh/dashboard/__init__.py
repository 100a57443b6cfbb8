"""The dashboard: one web page, on 127.0.0.1, showing the local mesh live (its graph coloured by
success rate, pods and their health, faults with controls, traces, a load generator).
`shopmesh up` runs it as a process of the mesh (`python -m shopmesh.dashboard`); `app` has the
routes, `security` the checks every request passes, `state` what the page shows, `load` the
load run it drives, `static/` the page itself (no code from anywhere else)."""
