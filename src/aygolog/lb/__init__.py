"""The load balancer: a registration API and a fast proxy in front of the Log API instances.

`create_load_balancer(settings)` builds the control plane (a Litestar app: registration API,
`/health`, `/metrics`); `serve_load_balancer(settings)` runs it behind the proxy (the data plane),
as `aygolog lb` does with one worker. With several, `aygolog.lb.workers` supervises N such
processes on one port and `aygolog.lb.bus` is what they tell each other; `aygolog.lb.tls` makes
the TLS context of `--tls-cert`/`--tls-key`.
"""

from __future__ import annotations

from aygolog.lb.app import (
    LifespanDriver,
    LoadBalancerState,
    create_load_balancer,
    lb_state,
    proxied,
    run_load_balancer,
    serve_load_balancer,
)
from aygolog.lb.health import HealthChecker, HealthCheckOptions
from aygolog.lb.pool import InstancePool, InstanceView, PoolOptions

__all__ = [
    "HealthCheckOptions",
    "HealthChecker",
    "InstancePool",
    "InstanceView",
    "LifespanDriver",
    "LoadBalancerState",
    "PoolOptions",
    "create_load_balancer",
    "lb_state",
    "proxied",
    "run_load_balancer",
    "serve_load_balancer",
]
