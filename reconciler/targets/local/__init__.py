"""The embedded local target: RayCluster and RayJob objects on real local Ray processes.

One module per concern: `target` (the Target protocol), `options`, `store` (what was applied),
`observe` (live state from Ray), `apply` (what the operator would do), `clusters` (the running
clusters), `runtime` (one cluster's processes) and `nodes` (process, port and command helpers).
"""
