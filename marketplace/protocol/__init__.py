"""What requesters, workers and verifiers agree on off chain: job bundles, result Merkle roots,
EIP-712 signed requests, usage receipts and the seeded capacity challenge.
"""
