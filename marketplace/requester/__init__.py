"""The requester's side: the gRPC client of a worker, and :class:`Requester`, which posts a job and
follows it to its end.
"""
