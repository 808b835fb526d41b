# pragma version ~=0.4.3
# pragma nonreentrancy off
"""
@title flopex provider registry
@custom:contract-name ProviderRegistry
@license GNU Affero General Public License v3.0 only
@notice Holds the stakes of providers and verifiers, the offers providers
        publish (devices, price floor, gRPC endpoint, receipt-signing key),
        their reputation counters and the throughput verifiers attested for
        them. Stake leaves only after an unbonding delay and never while the
        provider holds a lease. Each lease locks an amount of the active stake
        (at least what a slash on it could take), and only free stake
        (active less locked) backs new leases or may unbond; only the market and the accounts the owner
        authorized (the reservations contract) may lock, release and slash.
@dev Every token this contract holds is someone's stake:
     `token.balanceOf(self) == sum(active + unbonding)` over all accounts.
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable

initializes: ownable

exports: (ownable.owner, ownable.transfer_ownership)


# @dev Device kinds a provider can offer and a job can ask for.
DEVICE_CPU: public(constant(uint8)) = 0
DEVICE_CUDA: public(constant(uint8)) = 1

# @dev A provider is flagged when its claimed throughput exceeds the attested one
# by more than this factor (in basis points: 20_000 = 2x).
CAPACITY_FLAG_BPS: public(constant(uint256)) = 20_000
# @dev Seconds between queueing an owner's change and making it, once the market is set: two days' notice.
CHANGE_DELAY: public(constant(uint256)) = 172_800
MASK_32: constant(uint256) = 2**32 - 1
MASK_160: constant(uint256) = 2**160 - 1
# @dev Largest minimum provider stake the owner may set (it is kept in 96 bits).
MAX_MIN_PROVIDER_STAKE: public(constant(uint256)) = 2**96 - 1
MASK_64: constant(uint256) = 2**64 - 1


struct Offer:
    device_model: String[64]  # e.g. "NVIDIA H100 80GB HBM3" or the CPU model
    device_kind: uint8  # DEVICE_CPU or DEVICE_CUDA
    gpu_count: uint16  # devices offered as one unit
    memory_mb: uint32  # memory per device
    claimed_gflops: uint64  # throughput the provider claims, per device
    price_floor: uint256  # token units per GPU-hour it asks in instant auctions
    endpoint: String[128]  # gRPC endpoint, host:port
    signer: address  # key that signs the worker's usage receipts


struct Stake:
    active: uint256  # stake that backs bids and verifier duties
    unbonding: uint256  # stake on its way out, still slashable
    unbond_at: uint256  # when `unbonding` may be withdrawn
    active_jobs: uint256  # leases the market holds against this stake
    locked: uint256  # part of `active` the leases lock as collateral


struct StakeWords:
    active: uint256
    unbonding: uint256
    unbond_at: uint256
    # active_jobs | completed << 32 | failed << 64 | locked << 96: a lease and how it ended are one
    # word, so locking and releasing each write one word; once a lease has ended the word never
    # returns to zero, so the next lease rewrites it (2,900 gas) instead of creating it (20,000).
    leases: uint256


struct Reputation:
    completed: uint32  # leases settled with pay
    failed: uint32  # leases that ended in a refund by the provider's fault or no fault
    slashed: uint32  # times the stake was slashed


struct Attestation:
    gflops: uint64  # throughput a verifier measured, per device
    verifier: address  # who measured it
    attested_at: uint64  # when
    flagged: bool  # claimed throughput is beyond CAPACITY_FLAG_BPS of the measured one


# @dev The token stakes are held in.
token: public(immutable(IERC20))
# @dev The job market (allowed to lock, release and slash) and the least active stake a provider needs to
# register and bid, in the one word a lock reads: market | min_provider_stake << 160 (read them through
# `market` and `min_provider_stake`).
market_word: uint256
# @dev Other contracts the owner allowed to lock, release and slash (e.g. reservations).
authorized: public(HashMap[address, bool])
# @dev Least active stake a verifier needs to attest.
min_verifier_stake: public(uint256)
# @dev Seconds between asking to unbond and being able to withdraw.
unbonding_period: public(uint256)

# @dev Stakes of every account (read them through `stakes`).
stake_words: HashMap[address, StakeWords]
# @dev Offers of registered providers.
offers: public(HashMap[address, Offer])
# @dev What each registered provider's offer has to match a job, in one word: 1 | device_kind << 8 |
# gpu_count << 16 | memory_mb << 32; 0 when it has no registered offer. A bid's eligibility check then
# reads one word of the offer, not three (read the offer through `offers`, registration through `is_provider`).
devices: HashMap[address, uint256]
# @dev Whether an account has registered as a verifier.
is_verifier: public(HashMap[address, bool])
# @dev Times each provider's stake was slashed (its other reputation counters are in its lease word;
# read them through `reputation`).
slash_counts: HashMap[address, uint32]
# @dev Latest capacity attestation of each provider.
attestations: public(HashMap[address, Attestation])
# @dev Owner's changes waiting out CHANGE_DELAY: keccak256 of the change's calldata -> earliest time to make it.
queued_changes: public(HashMap[bytes32, uint256])


event Staked:
    account: indexed(address)
    amount: uint256
    active: uint256


event UnbondRequested:
    account: indexed(address)
    amount: uint256
    unbond_at: uint256


event StakeWithdrawn:
    account: indexed(address)
    amount: uint256


event ProviderRegistered:
    provider: indexed(address)
    device_kind: uint8
    gpu_count: uint16
    memory_mb: uint32
    price_floor: uint256
    endpoint: String[128]
    signer: address


event ProviderDeregistered:
    provider: indexed(address)


event PriceFloorChanged:
    provider: indexed(address)
    price_floor: uint256


event VerifierRegistered:
    verifier: indexed(address)


event VerifierDeregistered:
    verifier: indexed(address)


event ThroughputAttested:
    provider: indexed(address)
    verifier: indexed(address)
    gflops: uint64
    claimed_gflops: uint64
    flagged: bool


event StakeLocked:
    provider: indexed(address)
    active_jobs: uint256
    amount: uint256
    locked: uint256


event StakeReleased:
    provider: indexed(address)
    completed: bool
    active_jobs: uint256
    amount: uint256
    locked: uint256


event StakeSlashed:
    provider: indexed(address)
    amount: uint256


event MarketSet:
    market: indexed(address)


event AuthorizationChanged:
    account: indexed(address)
    authorized: bool


event ChangeQueued:
    change: indexed(bytes32)
    eta: uint256


event ParametersChanged:
    min_provider_stake: uint256
    min_verifier_stake: uint256
    unbonding_period: uint256


@deploy
def __init__(token_: IERC20, min_provider_stake_: uint256, min_verifier_stake_: uint256, unbonding_period_: uint256):
    """
    @notice Deploys the registry; the deployer owns it and sets the market once.
    @param token_ The token stakes are held in.
    @param min_provider_stake_ Least active stake to register and bid.
    @param min_verifier_stake_ Least active stake to attest.
    @param unbonding_period_ Seconds a withdrawal waits.
    """
    ownable.__init__()
    token = token_
    self._set_min_provider_stake(min_provider_stake_)
    self.min_verifier_stake = min_verifier_stake_
    self.unbonding_period = unbonding_period_


# ---------------------------------------------------------------- owner


@external
def set_market(market_: address):
    """
    @notice Names the market contract; it can be set only once.
    @param market_ The job market's address.
    """
    ownable._check_owner()
    assert self.market_word & MASK_160 == 0, "registry: market already set"
    assert market_ != empty(address), "registry: market is the zero address"
    assert market_ != ownable.owner, "registry: owner cannot slash"
    self.market_word |= convert(market_, uint256)
    log MarketSet(market=market_)


@external
def set_authorized(account: address, authorized_: bool):
    """
    @notice Allows (or stops) `account` to lock, release and slash stakes like the market.
            Only a contract other than the owner may be allowed: the owner cannot give
            itself (or any externally owned account) the power to slash. Once the market is
            set, an authorization must have been queued CHANGE_DELAY before (a revocation is at once).
    @dev For contracts that hold providers to terms of their own, such as reservations.
    @param account The contract to authorize.
    @param authorized_ True to allow, False to revoke.
    """
    ownable._check_owner()
    assert account != empty(address), "registry: account is the zero address"
    if authorized_:
        assert account != ownable.owner, "registry: owner cannot slash"
        assert account.is_contract, "registry: account is not a contract"
        self._take_queued(keccak256(slice(msg.data, 0, 68)))
    self.authorized[account] = authorized_
    log AuthorizationChanged(account=account, authorized=authorized_)


@external
def set_parameters(min_provider_stake_: uint256, min_verifier_stake_: uint256, unbonding_period_: uint256):
    """
    @notice Changes the minimum stakes and the unbonding period; once the market is set, the
            change must have been queued CHANGE_DELAY before.
    @param min_provider_stake_ Least active stake to register and bid.
    @param min_verifier_stake_ Least active stake to attest.
    @param unbonding_period_ Seconds a withdrawal waits.
    """
    ownable._check_owner()
    self._take_queued(keccak256(slice(msg.data, 0, 100)))
    self._set_min_provider_stake(min_provider_stake_)
    self.min_verifier_stake = min_verifier_stake_
    self.unbonding_period = unbonding_period_
    log ParametersChanged(
        min_provider_stake=min_provider_stake_,
        min_verifier_stake=min_verifier_stake_,
        unbonding_period=unbonding_period_,
    )


@external
def queue_change(change: bytes32):
    """
    @notice Announces an owner's change: `set_parameters` or `set_authorized` called with the
            calldata hashed here can be made CHANGE_DELAY from now, once.
    @param change keccak256 of the change's calldata.
    """
    ownable._check_owner()
    eta: uint256 = block.timestamp + CHANGE_DELAY
    self.queued_changes[change] = eta
    log ChangeQueued(change=change, eta=eta)


# ---------------------------------------------------------------- stake


@external
@nonreentrant
def stake(amount: uint256):
    """
    @notice Adds `amount` tokens to the caller's active stake (approve first).
    @dev Non-reentrant: moves tokens in.
    @param amount Token units to stake.
    """
    assert amount > 0, "registry: zero stake"
    self.stake_words[msg.sender].active += amount
    log Staked(account=msg.sender, amount=amount, active=self.stake_words[msg.sender].active)
    # Effects first, then pull the tokens.
    assert extcall token.transferFrom(msg.sender, self, amount, default_return_value=True), "registry: transfer failed"


@external
def request_unbond(amount: uint256):
    """
    @notice Moves `amount` of the caller's active stake to unbonding; it stays
            slashable and can be withdrawn after the unbonding period, once the
            caller holds no lease. A new request restarts the period.
    @param amount Token units to unbond.
    """
    assert amount > 0, "registry: zero amount"
    s: StakeWords = self.stake_words[msg.sender]
    assert s.active >= amount, "registry: amount exceeds active stake"
    # Stake locked as collateral for running leases stays until they end.
    assert s.active - amount >= s.leases >> 96, "registry: amount exceeds free stake"
    s.active -= amount
    s.unbonding += amount
    s.unbond_at = block.timestamp + self.unbonding_period
    self.stake_words[msg.sender] = s
    log UnbondRequested(account=msg.sender, amount=amount, unbond_at=s.unbond_at)


@external
@nonreentrant
def withdraw_unbonded():
    """
    @notice Withdraws the caller's unbonded stake after the unbonding period.
    @dev Non-reentrant: moves tokens out. The stake is zeroed before the transfer.
    """
    s: StakeWords = self.stake_words[msg.sender]
    assert s.unbonding > 0, "registry: nothing unbonding"
    assert block.timestamp >= s.unbond_at, "registry: still unbonding"
    assert s.leases & MASK_32 == 0, "registry: provider holds leases"
    amount: uint256 = s.unbonding
    self.stake_words[msg.sender].unbonding = 0
    log StakeWithdrawn(account=msg.sender, amount=amount)
    assert extcall token.transfer(msg.sender, amount, default_return_value=True), "registry: transfer failed"


# ---------------------------------------------------------------- roles


@external
def register_provider(offer: Offer):
    """
    @notice Registers the caller as a provider with `offer`, or replaces its offer.
    @param offer Devices, price floor, endpoint and receipt signer.
    """
    assert self.stake_words[msg.sender].active >= (self.market_word >> 160), "registry: stake below minimum"
    assert offer.device_kind <= DEVICE_CUDA, "registry: unknown device kind"
    assert offer.gpu_count > 0, "registry: no devices"
    assert offer.memory_mb > 0, "registry: no device memory"
    assert offer.price_floor > 0, "registry: zero price floor"
    assert offer.signer != empty(address), "registry: no signer"
    assert len(offer.endpoint) > 0, "registry: no endpoint"
    self.offers[msg.sender] = offer
    self.devices[msg.sender] = (
        1
        | (convert(offer.device_kind, uint256) << 8)
        | (convert(offer.gpu_count, uint256) << 16)
        | (convert(offer.memory_mb, uint256) << 32)
    )
    log ProviderRegistered(
        provider=msg.sender,
        device_kind=offer.device_kind,
        gpu_count=offer.gpu_count,
        memory_mb=offer.memory_mb,
        price_floor=offer.price_floor,
        endpoint=offer.endpoint,
        signer=offer.signer,
    )


@external
def set_price_floor(price_floor: uint256):
    """
    @notice Changes the caller's posted price per GPU-hour (what instant auctions charge) without
            rewriting the rest of its offer: a provider's pricing strategy moves it as its devices
            idle or fill up.
    @param price_floor Token units per GPU-hour; not zero.
    """
    assert self.devices[msg.sender] != 0, "registry: not a provider"
    assert price_floor > 0, "registry: zero price floor"
    self.offers[msg.sender].price_floor = price_floor
    log PriceFloorChanged(provider=msg.sender, price_floor=price_floor)


@external
def deregister_provider():
    """
    @notice Withdraws the caller's offer: it can no longer bid. Running leases go on.
    """
    assert self.devices[msg.sender] != 0, "registry: not a provider"
    self.devices[msg.sender] = 0
    log ProviderDeregistered(provider=msg.sender)


@external
def register_verifier():
    """
    @notice Registers the caller as a verifier; it needs the minimum verifier stake.
    """
    assert self.stake_words[msg.sender].active >= self.min_verifier_stake, "registry: stake below minimum"
    self.is_verifier[msg.sender] = True
    log VerifierRegistered(verifier=msg.sender)


@external
def deregister_verifier():
    """
    @notice Removes the caller from the verifiers.
    """
    assert self.is_verifier[msg.sender], "registry: not a verifier"
    self.is_verifier[msg.sender] = False
    log VerifierDeregistered(verifier=msg.sender)


@external
def attest_throughput(provider: address, gflops: uint64):
    """
    @notice Records the throughput a verifier measured for `provider` with a
            capacity challenge; flags the provider when its claim is beyond
            CAPACITY_FLAG_BPS of the measurement.
    @param provider The provider measured.
    @param gflops Measured throughput per device, in GFLOP/s.
    """
    assert self._is_active_verifier(msg.sender), "registry: caller is not a verifier"
    assert msg.sender != provider, "registry: verifier cannot attest itself"
    assert self.devices[provider] != 0, "registry: not a provider"
    claimed: uint64 = self.offers[provider].claimed_gflops
    flagged: bool = convert(claimed, uint256) * 10_000 > convert(gflops, uint256) * CAPACITY_FLAG_BPS
    self.attestations[provider] = Attestation(
        gflops=gflops, verifier=msg.sender, attested_at=convert(block.timestamp, uint64), flagged=flagged
    )
    log ThroughputAttested(
        provider=provider, verifier=msg.sender, gflops=gflops, claimed_gflops=claimed, flagged=flagged
    )


# ---------------------------------------------------------------- market and authorized only


@external
def lock(provider: address, amount: uint256) -> bool:
    """
    @notice Locks `amount` of `provider`'s free stake (active less locked) as the
            collateral of a new lease; while it holds any lease, its unbonding
            stake cannot leave, and locked stake cannot unbond.
    @dev Returns False and changes nothing when `provider` is not a registered
         provider with at least the minimum active stake and `amount` of free stake.
    @param provider The leased provider.
    @param amount Token units to lock: at least what a slash on the lease can take.
    @return Whether the stake was locked.
    """
    self._check_locker()
    return self._lock(provider, amount)


@external
def lock_matching(provider: address, amount: uint256, device_kind: uint8, gpus: uint16, min_memory_mb: uint32) -> bool:
    """
    @notice `lock`, for a provider whose offer also has the devices a job needs: the market checks and
            locks a winner in one call.
    @dev Returns False and changes nothing when `lock` would, or when the devices do not match.
    @param provider The leased provider.
    @param amount Token units to lock.
    @param device_kind Device kind the job needs.
    @param gpus Devices the job needs.
    @param min_memory_mb Memory per device the job needs.
    @return Whether the stake was locked.
    """
    self._check_locker()
    if not self._has_devices(provider, device_kind, gpus, min_memory_mb):
        return False
    return self._lock(provider, amount)


@external
def release(provider: address, amount: uint256, completed: bool):
    """
    @notice Ends a lease of `provider`, unlocks the `amount` it locked and counts how it ended.
    @param provider The provider whose lease ended.
    @param amount The collateral the lease locked.
    @param completed True when the provider was paid, False otherwise.
    """
    self._check_locker()
    leases: uint256 = self.stake_words[provider].leases
    active_jobs: uint256 = (leases & MASK_32) - 1
    locked: uint256 = (leases >> 96) - amount
    # The counter of how it ended, in the same word (32 bits each: far more leases than a provider ends).
    counted: uint256 = leases & (MASK_64 << 32)
    if completed:
        counted += 1 << 32
    else:
        counted += 1 << 64
    self.stake_words[provider].leases = active_jobs | counted | (locked << 96)
    log StakeReleased(provider=provider, completed=completed, active_jobs=active_jobs, amount=amount, locked=locked)


@external
@nonreentrant
def slash(provider: address, amount: uint256) -> uint256:
    """
    @notice Takes up to `amount` of `provider`'s stake, active stake first,
            and sends it to the caller (the market or an authorized contract),
            which shares it out.
    @dev Non-reentrant: moves tokens out. The stake is reduced before the transfer.
    @param provider The provider to slash.
    @param amount Token units to take at most.
    @return The amount actually taken.
    """
    self._check_locker()
    s: StakeWords = self.stake_words[provider]
    taken: uint256 = min(amount, s.active + s.unbonding)
    from_active: uint256 = min(taken, s.active)
    s.active -= from_active
    s.unbonding -= taken - from_active
    self.stake_words[provider] = s
    self.slash_counts[provider] += 1
    log StakeSlashed(provider=provider, amount=taken)
    if taken > 0:
        assert extcall token.transfer(msg.sender, taken, default_return_value=True), "registry: transfer failed"
    return taken


# ---------------------------------------------------------------- views


@external
@view
def market() -> address:
    """
    @notice The job market: allowed to lock, release and slash.
    @return Its address (the zero address before it is set).
    """
    return convert(self.market_word & MASK_160, address)


@external
@view
def min_provider_stake() -> uint256:
    """
    @notice Least active stake a provider needs to register and bid.
    @return The stake, in token units.
    """
    return self.market_word >> 160


@external
@view
def is_provider(account: address) -> bool:
    """
    @notice Whether an account has a registered offer.
    @param account The account.
    @return True when it is a registered provider.
    """
    return self.devices[account] != 0


@external
@view
def is_eligible(provider: address, device_kind: uint8, gpus: uint16, min_memory_mb: uint32, collateral: uint256) -> bool:
    """
    @notice Whether `provider` may bid for a job with these requirements and lock `collateral` for it.
    @param provider The provider.
    @param device_kind Device kind the job needs.
    @param gpus Devices the job needs.
    @param min_memory_mb Memory per device the job needs.
    @param collateral Stake the lease would lock.
    @return True when registered, staked with the minimum and `collateral` of free stake,
            and its devices meet the requirements.
    """
    word: uint256 = self.devices[provider]
    if word == 0:
        return False
    # Field by field (two words, not four). Stake locked by running leases backs no new bid.
    active: uint256 = self.stake_words[provider].active
    if active < (self.market_word >> 160) or active - min(self.stake_words[provider].leases >> 96, active) < collateral:
        return False
    return self._has_devices(provider, device_kind, gpus, min_memory_mb)


@external
@view
def reputation(provider: address) -> Reputation:
    """
    @notice A provider's reputation counters.
    @param provider The provider.
    @return Leases settled with pay, leases that ended otherwise, and times its stake was slashed.
    """
    leases: uint256 = self.stake_words[provider].leases
    return Reputation(
        completed=convert((leases >> 32) & MASK_32, uint32),
        failed=convert((leases >> 64) & MASK_32, uint32),
        slashed=self.slash_counts[provider],
    )


@external
@view
def stakes(account: address) -> Stake:
    """
    @notice An account's stake.
    @param account The account.
    @return Active, unbonding, unbond time, leases held and the stake they lock.
    """
    s: StakeWords = self.stake_words[account]
    return Stake(
        active=s.active, unbonding=s.unbonding, unbond_at=s.unbond_at, active_jobs=s.leases & MASK_32, locked=s.leases >> 96
    )


@external
@view
def free_stake(account: address) -> uint256:
    """
    @notice Active stake no lease locks: what backs new leases and may unbond.
    @param account The account.
    @return Active less locked stake (zero when slashes took locked stake).
    """
    s: StakeWords = self.stake_words[account]
    return s.active - min(s.leases >> 96, s.active)


@external
@view
def price_floor(provider: address) -> uint256:
    """
    @notice The price per GPU-hour `provider` asks in instant auctions.
    @param provider The provider.
    @return Token units per GPU-hour.
    """
    return self.offers[provider].price_floor


@external
@view
def is_active_verifier(account: address) -> bool:
    """
    @notice Whether `account` is a registered verifier with enough stake.
    @param account The account.
    @return True when it may attest.
    """
    return self._is_active_verifier(account)


@external
@view
def total_stake(account: address) -> uint256:
    """
    @notice All of `account`'s stake that can still be slashed.
    @param account The account.
    @return Active plus unbonding stake.
    """
    return self.stake_words[account].active + self.stake_words[account].unbonding


@internal
@view
def _is_active_verifier(account: address) -> bool:
    return self.is_verifier[account] and self.stake_words[account].active >= self.min_verifier_stake


@internal
def _set_min_provider_stake(amount: uint256):
    assert amount <= MAX_MIN_PROVIDER_STAKE, "registry: minimum stake too large"
    self.market_word = (self.market_word & MASK_160) | (amount << 160)


@internal
def _take_queued(change: bytes32):
    # Before the market is set the owner configures freely: nobody can have been leased yet.
    if self.market_word & MASK_160 == 0:
        return
    eta: uint256 = self.queued_changes[change]
    assert eta != 0, "registry: change not queued"
    assert block.timestamp >= eta, "registry: change still delayed"
    self.queued_changes[change] = 0


@internal
def _lock(provider: address, amount: uint256) -> bool:
    active: uint256 = self.stake_words[provider].active
    leases: uint256 = self.stake_words[provider].leases
    locked: uint256 = leases >> 96
    if self.devices[provider] == 0 or active < (self.market_word >> 160) or active - min(locked, active) < amount:
        return False
    locked += amount
    active_jobs: uint256 = (leases & MASK_32) + 1
    self.stake_words[provider].leases = active_jobs | (leases & (MASK_64 << 32)) | (locked << 96)
    log StakeLocked(provider=provider, active_jobs=active_jobs, amount=amount, locked=locked)
    return True


@internal
@view
def _has_devices(provider: address, device_kind: uint8, gpus: uint16, min_memory_mb: uint32) -> bool:
    # The offer's devices from their packed word (the whole offer would read its strings too).
    word: uint256 = self.devices[provider]
    return (
        word != 0
        and (word >> 8) & 255 == convert(device_kind, uint256)
        and (word >> 16) & 65_535 >= convert(gpus, uint256)
        and (word >> 32) & MASK_32 >= convert(min_memory_mb, uint256)
    )


@internal
@view
def _check_locker():
    # The market first: its calls then pay for no second storage read.
    assert msg.sender == convert(self.market_word & MASK_160, address) or self.authorized[msg.sender], "registry: caller may not lock or slash"
