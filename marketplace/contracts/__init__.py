"""flopex's contracts from Python: one base binding, a binding per contract, decoded events, revert
reasons, deployment files, dev markets and the build step from ``contracts/*.vy`` to ``artifacts/``.
"""
