"""sandbox-run: a namespace-isolating, cgroup-accounted job launcher for batch systems."""

__version__ = "0.1.0"
