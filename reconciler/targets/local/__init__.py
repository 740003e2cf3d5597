"""The embedded local target: RayCluster, RayJob, RayCronJob and RayService objects on real local Ray processes.

One module per concern: `target` (the Target protocol), `options`, `limits` (the caps), `store` (what was
applied), `observe` (live state from Ray), `apply` (what the operator would do), `control` (the operator's own
loop), `cron` (RayCronJob slots), `serve` (Ray Serve's REST API for a RayService), `endpoints` (each RayService's
address), `clusters` (the running clusters), `runtime` (one cluster's processes), `nodes` (process, port and
command helpers) and `launch` (`ray start` kept on loopback).
"""
