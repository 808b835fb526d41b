"""The provider daemon: stake, register, bid, run, commit and settle; reserved capacity; metrics."""
