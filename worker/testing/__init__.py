"""Dishonest providers and members, for tests and benchmarks that need a cheat to catch.

Nothing in the daemons imports this package.
"""
