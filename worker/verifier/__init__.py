"""The verifier daemon: policy checks (replay, Freivalds, redundancy), capacity challenges and
rulings on reservations reported not served.
"""
