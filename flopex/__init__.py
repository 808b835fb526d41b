"""The ``flopex`` command line and the demo: the only package that imports both the protocol library
(:mod:`marketplace`) and the provider's daemons (:mod:`worker`).
"""
