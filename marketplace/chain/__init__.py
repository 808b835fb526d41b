"""Talking to an EVM chain: the chain client (embedded eth-tester or any JSON-RPC node), keystores,
anvil, and the JSON-RPC server behind ``flopex chain up``.

Imports only :mod:`marketplace.errors` and :mod:`marketplace.types`.
"""
