"""Pure verification maths: tolerant comparison, Freivalds' check, replay sampling and billing caps.

Nothing here runs job code or talks to a chain; the verifier daemon (:mod:`worker.verifier`) and the
benchmarks build on these functions, and so can anyone who wants to re-check a verdict.
"""
