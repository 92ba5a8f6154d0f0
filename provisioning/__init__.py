"""Everything that touches a host: SSH transport, the host agent, device probes.

This package imports no Django and nothing from ``portal`` (docs/architecture.md): the portal
calls it, never the other way round, so the agent and the probes run on hosts as plain Python.
"""
