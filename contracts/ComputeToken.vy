# pragma version ~=0.4.3
# pragma nonreentrancy off
"""
@title flopex compute token
@custom:contract-name ComputeToken
@license GNU Affero General Public License v3.0 only
@notice The ERC-20 token that jobs are paid in, with EIP-2612 `permit`
        so a requester can approve and post a job in one transaction.
        The deployer is owner and first minter; on development chains a
        faucet account is given the minter role.
@dev A thin deployable: all logic lives in snekmate's audited `erc20`
     and `ownable` modules.
"""

from snekmate.auth import ownable
from snekmate.tokens import erc20

initializes: ownable
initializes: erc20[ownable := ownable]

exports: erc20.__interface__


@deploy
def __init__(name_: String[25], symbol_: String[5], name_eip712_: String[50], version_eip712_: String[20]):
    """
    @notice Deploys the token with 18 decimals; the deployer owns it and may mint.
    @param name_ The token's name.
    @param symbol_ The token's symbol.
    @param name_eip712_ The EIP-712 domain name used by `permit`.
    @param version_eip712_ The EIP-712 domain version used by `permit`.
    """
    ownable.__init__()
    erc20.__init__(name_, symbol_, 18, name_eip712_, version_eip712_)
