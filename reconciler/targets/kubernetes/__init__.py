"""The Kubernetes target: KubeRay objects (and ConfigMaps/Secrets) on a cluster, by server-side apply.

One module per concern: `target` (the Target protocol), `options`, `cache` (list+watch),
`observe`, `body` (apply body, autoscaler rules), `dryrun` (expected state), `apply`, `events`
and `ledger` (ConfigMap). Requests go through `reconciler.kubeapi`.
"""
