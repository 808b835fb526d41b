"""Market data and rules in Python: pricing strategies, the clearing rules, the price index and its
chart, and which worker runs a slot.
"""
