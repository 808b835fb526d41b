"""The worker node: the gRPC service, job manager and SQLite store, its configuration, leases (from a
file or the chain), device discovery and capacity challenges.
"""
