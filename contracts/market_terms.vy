# pragma version ~=0.4.3
"""
@title flopex market terms shared by the market and the contracts that read its slots
@license AGPL-3.0-only
@notice Constants only: JobMarket publishes them (NO_SHOW_FEE_BPS() and so on) and ProviderPool
        settles its members' shares by the same numbers, so the two can never disagree.
"""

# @dev Share of a slot's value a requester pays its provider when it never delivered a runnable bundle.
NO_SHOW_FEE_BPS: constant(uint256) = 1_000
# @dev A claim may exceed the verified GPU-seconds by this much before the excess is cut from collateral.
OVER_CLAIM_TOLERANCE_BPS: constant(uint256) = 500
# @dev The result root by which a provider reports a no-show instead of a result.
NO_SHOW_ROOT: constant(bytes32) = 0x0000000000000000000000000000000000000000000000000000000000000001
