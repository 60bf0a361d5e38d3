"""Helpers shared by the tests and the benches: a real daemon process, free ports, /metrics, configs, data.

Test modules import from here, never from each other. The modules import only what they need at the top,
so that a bench may import `tests.support.net` without the daemon's dependencies.
"""
