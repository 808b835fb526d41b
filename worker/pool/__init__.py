"""Provider pools: the operator's daemon (bids for the pool, assigns slots) and the member's."""
