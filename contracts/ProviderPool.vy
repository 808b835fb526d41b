# pragma version ~=0.4.3
# pragma nonreentrancy off
"""
@title flopex provider pool
@custom:contract-name ProviderPool
@license GNU Affero General Public License v3.0 only
@notice Small GPU owners bid as one provider. Members join with a stake and a
        description of their devices; the pool stakes every member's stake in
        the provider registry as its own, registers one offer and bids like any
        provider through operator-only pass-through calls. When it wins, the
        operator assigns the slot to one member whose devices fit the job; the
        member runs it. When the slot settles at the market the pool books the
        outcome to that member: the pay (less the operator's fee) on a paid
        slot, the slash on a slashed one (the culprit's stake first, then every
        other member's stake pro rata). Members leave with their stake after an
        unbonding period and never while they hold an assignment.
@dev Money the pool is owed is tracked in one ledger:
     `token.balanceOf(self) + registry stake + market credit
      == sum(member stake + unbonding) + sum(credits) + unattributed income - unattributed loss`,
     where "unattributed" is what reached the pool (or left it) at the market
     or the registry without the pool having booked it yet. `settle` books it
     per slot; `reconcile` books what is left once no assignment is open.
     A pool serves at most one slot per job: the market lets one provider
     address hold only one slot of a job.
"""

from ethereum.ercs import IERC20

from . import market_terms


# ---------------------------------------------------------------- the registry and market, as the pool sees them


struct Offer:
    device_model: String[64]  # e.g. "NVIDIA RTX 4090"
    device_kind: uint8  # 0 cpu, 1 cuda
    gpu_count: uint16  # devices one slot can use: those of one member
    memory_mb: uint32  # memory per device
    claimed_gflops: uint64  # throughput per device
    price_floor: uint256  # token units per GPU-hour in instant auctions
    endpoint: String[128]  # the pool's gRPC gateway, host:port
    signer: address  # key that signs the pool's usage receipts


struct RegistryStake:
    active: uint256  # backs bids
    unbonding: uint256  # on its way out, still slashable
    unbond_at: uint256  # when `unbonding` may be withdrawn
    active_jobs: uint256  # leases held against the stake
    locked: uint256  # part of `active` the leases lock as collateral


struct JobSpec:
    requester: address
    bundle_hash: bytes32
    device_kind: uint8
    gpus: uint16
    min_memory_mb: uint32
    policy: uint8
    auction: uint8
    redundancy: uint8
    max_price: uint256
    max_gpu_seconds: uint64
    bid_deadline: uint64
    reveal_deadline: uint64
    run_duration: uint64
    challenge_window: uint64


struct MarketJob:
    spec_hash: bytes32
    status: uint256
    escrow: uint256
    count: uint8
    lease_start: uint64


struct MarketSlot:
    provider: address
    status: uint256
    price: uint256
    result_root: bytes32
    gpu_seconds: uint64
    committed_at: uint64
    disputer: address


interface IProviderRegistry:
    def token() -> address: view
    def market() -> address: view
    def stakes(account: address) -> RegistryStake: view
    def total_stake(account: address) -> uint256: view
    def stake(amount: uint256): nonpayable
    def request_unbond(amount: uint256): nonpayable
    def withdraw_unbonded(): nonpayable
    def register_provider(offer: Offer): nonpayable
    def deregister_provider(): nonpayable


interface IJobMarket:
    def token() -> address: view
    def registry() -> address: view
    def jobs(job_id: uint256) -> MarketJob: view
    def slots(job_id: uint256, index: uint256) -> MarketSlot: view
    def credits(account: address) -> uint256: view
    def fee_bps() -> uint256: view
    def dispute_bonds(job_id: uint256, slot: uint256) -> uint256: view
    def base_slashes(job_id: uint256, slot: uint256) -> uint256: view
    def over_claims(job_id: uint256, slot: uint256) -> uint64: view
    def commit_bid(job_id: uint256, spec: JobSpec, commitment: bytes32): nonpayable
    def reveal_bid(job_id: uint256, spec: JobSpec, price: uint256, salt: bytes32): nonpayable
    def take_job(job_id: uint256, spec: JobSpec) -> uint8: nonpayable
    def commit_result(job_id: uint256, spec: JobSpec, slot: uint8, result_root: bytes32, gpu_seconds: uint64): nonpayable
    def settle(job_id: uint256, spec: JobSpec, slot: uint8): nonpayable
    def withdraw() -> uint256: nonpayable


# ---------------------------------------------------------------- constants


# @dev Highest operator fee, in basis points (20%).
MAX_FEE_BPS: public(constant(uint256)) = 2_000
# @dev Most members one pool holds (bounds the pro-rata slashing loop).
MAX_MEMBERS: public(constant(uint256)) = 64
BPS: constant(uint256) = 10_000
SECONDS_PER_HOUR: constant(uint256) = 3_600

# @dev JobMarket's SlotStatus flag values the pool reads.
SLOT_ASSIGNED: constant(uint256) = 1
SLOT_PAID: constant(uint256) = 64
SLOT_SLASHED: constant(uint256) = 128
SLOT_REFUNDED: constant(uint256) = 256
# @dev JobMarket's NO_SHOW_FEE_BPS, OVER_CLAIM_TOLERANCE_BPS and NO_SHOW_ROOT (one source: market_terms.vy).
NO_SHOW_FEE_BPS: constant(uint256) = market_terms.NO_SHOW_FEE_BPS
OVER_CLAIM_TOLERANCE_BPS: constant(uint256) = market_terms.OVER_CLAIM_TOLERANCE_BPS
NO_SHOW_ROOT: constant(bytes32) = market_terms.NO_SHOW_ROOT
SLOT_RELEASED: constant(uint256) = 512
SLOT_FINAL: constant(uint256) = SLOT_PAID | SLOT_SLASHED | SLOT_REFUNDED | SLOT_RELEASED


struct Member:
    stake: uint256  # bonded stake: backs the pool's bids, slashable
    unbonding: uint256  # stake on its way out, still slashable
    unbond_at: uint256  # when `unbonding` may be withdrawn
    assignments: uint256  # slots assigned to it and not yet booked
    gpu_seconds: uint256  # verified GPU-seconds it delivered, all time
    gpus: uint16  # devices on its worker
    memory_mb: uint32  # memory per device
    signer: address  # key that signs its worker's usage receipts
    endpoint: String[128]  # gRPC endpoint of its worker, host:port
    joined: bool  # whether it is a member


# ---------------------------------------------------------------- state


# @dev The token stakes and pay are in.
token: public(immutable(IERC20))
# @dev The provider registry that holds the pool's stake.
registry: public(immutable(IProviderRegistry))
# @dev The job market the pool bids in.
market: public(immutable(IJobMarket))
# @dev Who bids for the pool, assigns slots and earns the fee.
operator: public(immutable(address))
# @dev Operator's share of each payment, in basis points.
fee_bps: public(immutable(uint256))
# @dev Least bonded stake a member needs to join and to be assigned work.
min_member_stake: public(immutable(uint256))
# @dev Seconds between a member asking to leave and withdrawing its stake.
unbonding_period: public(immutable(uint256))

# @dev Members by address.
members: public(HashMap[address, Member])
# @dev Every member, for pro-rata slashing.
member_list: public(DynArray[address, MAX_MEMBERS])
# @dev Tokens each member (and the operator) can withdraw.
credits: public(HashMap[address, uint256])
# @dev Member each slot is assigned to: job id -> slot index -> member.
assignments: public(HashMap[uint256, HashMap[uint256, address]])
# @dev Whether a slot's outcome has been booked: job id -> slot index -> booked.
booked: public(HashMap[uint256, HashMap[uint256, bool]])

# @dev Sum of members' bonded stake.
total_stake: public(uint256)
# @dev Sum of members' unbonding stake.
total_unbonding: public(uint256)
# @dev Sum of all credits.
total_credits: public(uint256)
# @dev Assignments not yet booked.
open_assignments: public(uint256)
# @dev Sum of the devices of all members (the pool's aggregate capacity).
total_gpus: public(uint256)

# @dev Registry stake (active + unbonding) as the pool booked it; a lower real stake is an unbooked slash.
booked_registry_stake: public(uint256)
# @dev Tokens withdrawn from the registry, held here for members' exits.
released: public(uint256)
# @dev Released stake earmarked for each member whose exit was due when its batch came out; it is
# that member's alone (a later exit cannot take it), and never more than the member's unbonding.
pots: public(HashMap[address, uint256])
# @dev Sum of the pots.
earmarked: public(uint256)
# @dev Tokens collected from the market and not yet withdrawn as credit.
cash: public(uint256)
# @dev All market credit the pool ever collected.
total_collected: public(uint256)
# @dev All income (market credit) the pool ever booked to someone.
total_income_booked: public(uint256)


# ---------------------------------------------------------------- events


event MemberJoined:
    member: indexed(address)
    stake: uint256
    gpus: uint16
    memory_mb: uint32
    signer: address
    endpoint: String[128]


event MemberStaked:
    member: indexed(address)
    amount: uint256
    stake: uint256


event MemberDevicesUpdated:
    member: indexed(address)
    gpus: uint16
    memory_mb: uint32
    signer: address
    endpoint: String[128]


event LeaveRequested:
    member: indexed(address)
    amount: uint256
    unbond_at: uint256


event StakeWithdrawn:
    member: indexed(address)
    amount: uint256
    left: bool


event PoolRegistered:
    covering_member: indexed(address)
    device_kind: uint8
    gpu_count: uint16
    memory_mb: uint32
    price_floor: uint256
    endpoint: String[128]
    total_gpus: uint256


event PoolDeregistered:
    operator: indexed(address)


event SlotAssigned:
    job_id: indexed(uint256)
    slot: uint8
    member: indexed(address)
    previous: address


event SlotBooked:
    job_id: indexed(uint256)
    slot: uint8
    member: indexed(address)
    status: uint256
    gpu_seconds: uint64
    income: uint256
    member_pay: uint256
    operator_fee: uint256
    loss: uint256


event MemberSlashed:
    member: indexed(address)
    job_id: indexed(uint256)
    amount: uint256
    culprit: bool


event Collected:
    caller: indexed(address)
    amount: uint256


event CreditWithdrawn:
    account: indexed(address)
    amount: uint256


event Reconciled:
    caller: indexed(address)
    income: uint256
    loss: uint256


event RegistryUnbondRequested:
    amount: uint256
    unbond_at: uint256


event RegistryStakeReleased:
    amount: uint256


event Restaked:
    amount: uint256


# ---------------------------------------------------------------- deploy


@deploy
def __init__(
    token_: IERC20,
    registry_: IProviderRegistry,
    market_: IJobMarket,
    operator_: address,
    fee_bps_: uint256,
    min_member_stake_: uint256,
    unbonding_period_: uint256,
):
    """
    @notice Deploys one pool, run by `operator_`.
    @param token_ The token stakes and pay are in.
    @param registry_ The provider registry (its token must be `token_`).
    @param market_ The job market (its registry must be `registry_`).
    @param operator_ Who bids, assigns and earns the fee.
    @param fee_bps_ Operator's share of each payment, at most MAX_FEE_BPS.
    @param min_member_stake_ Least stake to join and to be assigned work (non-zero).
    @param unbonding_period_ Seconds a leaving member waits for its stake.
    """
    assert operator_ != empty(address), "pool: operator is the zero address"
    assert fee_bps_ <= MAX_FEE_BPS, "pool: fee above 20%"
    assert min_member_stake_ > 0, "pool: zero minimum stake"
    assert staticcall registry_.token() == token_.address, "pool: registry token mismatch"
    assert staticcall market_.registry() == registry_.address, "pool: market does not use the registry"
    assert staticcall registry_.market() == market_.address, "pool: registry does not serve the market"
    token = token_
    registry = registry_
    market = market_
    operator = operator_
    fee_bps = fee_bps_
    min_member_stake = min_member_stake_
    unbonding_period = unbonding_period_


# ---------------------------------------------------------------- members


@external
@nonreentrant
def join(stake: uint256, gpus: uint16, memory_mb: uint32, signer: address, endpoint: String[128]):
    """
    @notice Joins the pool with `stake` tokens (approve the pool first) and the
            caller's worker: its devices, receipt signer and gRPC endpoint. The
            stake is bonded in the registry as the pool's stake at once.
    @dev Non-reentrant: pulls tokens in and stakes them.
    @param stake Token units to bond, at least `min_member_stake`.
    @param gpus Devices on the member's worker.
    @param memory_mb Memory per device.
    @param signer Key that signs the worker's usage receipts.
    @param endpoint gRPC endpoint of the worker, host:port.
    """
    assert not self.members[msg.sender].joined, "pool: already a member"
    assert stake >= min_member_stake, "pool: stake below minimum"
    self._check_devices(gpus, memory_mb, signer, endpoint)
    assert len(self.member_list) < MAX_MEMBERS, "pool: pool is full"
    m: Member = self.members[msg.sender]
    m.stake = stake
    m.gpus = gpus
    m.memory_mb = memory_mb
    m.signer = signer
    m.endpoint = endpoint
    m.joined = True
    self.members[msg.sender] = m
    self.member_list.append(msg.sender)
    self.total_stake += stake
    self.total_gpus += convert(gpus, uint256)
    log MemberJoined(member=msg.sender, stake=stake, gpus=gpus, memory_mb=memory_mb, signer=signer, endpoint=endpoint)
    # Effects first, then pull the tokens and bond them.
    self._pull_and_bond(msg.sender, stake)


@external
@nonreentrant
def add_stake(amount: uint256):
    """
    @notice Bonds `amount` more tokens of the caller's (approve the pool first).
    @dev Non-reentrant: pulls tokens in and stakes them.
    @param amount Token units to add.
    """
    assert self.members[msg.sender].joined, "pool: not a member"
    assert amount > 0, "pool: zero amount"
    stake: uint256 = self.members[msg.sender].stake + amount
    self.members[msg.sender].stake = stake
    self.total_stake += amount
    log MemberStaked(member=msg.sender, amount=amount, stake=stake)
    self._pull_and_bond(msg.sender, amount)


@external
def update_devices(gpus: uint16, memory_mb: uint32, signer: address, endpoint: String[128]):
    """
    @notice Replaces the description of the caller's worker.
    @param gpus Devices on the member's worker.
    @param memory_mb Memory per device.
    @param signer Key that signs the worker's usage receipts.
    @param endpoint gRPC endpoint of the worker, host:port.
    """
    assert self.members[msg.sender].joined, "pool: not a member"
    self._check_devices(gpus, memory_mb, signer, endpoint)
    self.total_gpus = self.total_gpus - convert(self.members[msg.sender].gpus, uint256) + convert(gpus, uint256)
    self.members[msg.sender].gpus = gpus
    self.members[msg.sender].memory_mb = memory_mb
    self.members[msg.sender].signer = signer
    self.members[msg.sender].endpoint = endpoint
    log MemberDevicesUpdated(member=msg.sender, gpus=gpus, memory_mb=memory_mb, signer=signer, endpoint=endpoint)


@external
@nonreentrant
def request_leave(amount: uint256):
    """
    @notice Moves `amount` of the caller's bonded stake to unbonding. It stays
            slashable, for the member's own assignments and pro rata for the
            pool's, until it is withdrawn after `unbonding_period`; a new request
            restarts the period. What is left bonded must be zero or at least
            `min_member_stake`. Starts the registry unbonding when none is in flight.
    @dev Non-reentrant: may call the registry.
    @param amount Token units to unbond.
    """
    assert self.members[msg.sender].joined, "pool: not a member"
    assert amount > 0, "pool: zero amount"
    m: Member = self.members[msg.sender]
    assert amount <= m.stake, "pool: amount exceeds stake"
    assert m.stake - amount == 0 or m.stake - amount >= min_member_stake, "pool: stake would fall below minimum"
    m.stake -= amount
    m.unbonding += amount
    m.unbond_at = block.timestamp + unbonding_period
    self.members[msg.sender] = m
    self.total_stake -= amount
    self.total_unbonding += amount
    log LeaveRequested(member=msg.sender, amount=amount, unbond_at=m.unbond_at)
    self._sync()


@external
@nonreentrant
def withdraw_stake() -> uint256:
    """
    @notice Withdraws the caller's unbonding stake once its period has passed,
            it holds no assignment and the registry has released the tokens
            (`sync` moves them along: its own pot first, then released stake no
            earlier exit claimed). The pool must hold no running lease and no
            unbooked slash, so that a leaver bears its pro-rata share of every
            slash of a lease that ran while its stake backed the pool. A member
            with nothing left leaves the pool.
    @dev Non-reentrant: moves tokens out. The stake is zeroed before the transfer.
    @return The amount withdrawn.
    """
    m: Member = self.members[msg.sender]
    assert m.unbonding > 0, "pool: nothing unbonding"
    assert block.timestamp >= m.unbond_at, "pool: still unbonding"
    assert m.assignments == 0, "pool: member holds assignments"
    self._sync()
    amount: uint256 = m.unbonding
    pot: uint256 = self.pots[msg.sender]
    assert pot + (self.released - self.earmarked) >= amount, "pool: stake not yet released by the registry"
    # A slash still to book, or a lease still running, may take a share of this stake.
    assert self._unbooked_loss() == 0, "pool: a slash is not yet booked"
    assert (staticcall registry.stakes(self)).active_jobs == 0, "pool: leases still run"
    # First zero the stake, then send the tokens.
    self.earmarked -= pot
    self.pots[msg.sender] = 0
    self.released -= amount
    self.members[msg.sender].unbonding = 0
    self.total_unbonding -= amount
    left: bool = m.stake == 0
    if left:
        self._remove(msg.sender)
    log StakeWithdrawn(member=msg.sender, amount=amount, left=left)
    assert extcall token.transfer(msg.sender, amount, default_return_value=True), "pool: transfer failed"
    return amount


@external
@nonreentrant
def sync():
    """
    @notice Moves members' exits through the registry: withdraws a batch whose
            unbonding has passed (once the pool holds no lease), starts a new
            batch when none is in flight, and bonds back tokens held beyond what
            leaving members are owed. Anyone may call.
    @dev Non-reentrant: moves tokens between the registry and the pool.
    """
    self._sync()


# ---------------------------------------------------------------- operator: registry


@external
def register(offer: Offer, covering_member: address):
    """
    @notice Registers (or updates) the pool's offer in the registry. A slot runs
            on one member, so the offer may promise no more devices or memory
            than `covering_member` has: every job the pool can win then has a
            member that can run it. The pool's aggregate is `total_gpus`.
    @param offer The offer; its `gpu_count` and `memory_mb` are per slot.
    @param covering_member A member whose worker covers the offer.
    """
    self._check_operator()
    m: Member = self.members[covering_member]
    assert m.joined and m.stake >= min_member_stake, "pool: covering member is not a bonded member"
    assert m.gpus >= offer.gpu_count, "pool: offer has more devices than the member"
    assert m.memory_mb >= offer.memory_mb, "pool: offer has more memory than the member"
    extcall registry.register_provider(offer)
    log PoolRegistered(
        covering_member=covering_member,
        device_kind=offer.device_kind,
        gpu_count=offer.gpu_count,
        memory_mb=offer.memory_mb,
        price_floor=offer.price_floor,
        endpoint=offer.endpoint,
        total_gpus=self.total_gpus,
    )


@external
def deregister():
    """
    @notice Withdraws the pool's offer: it can no longer bid. Running leases go on.
    """
    self._check_operator()
    extcall registry.deregister_provider()
    log PoolDeregistered(operator=msg.sender)


# ---------------------------------------------------------------- operator: market


@external
def commit_bid(job_id: uint256, spec: JobSpec, commitment: bytes32):
    """
    @notice Commits a sealed ask for the pool; the commitment is
            `market.bid_commitment(job_id, pool, price, salt)`.
    @param job_id The job.
    @param spec Its terms.
    @param commitment The sealed ask.
    """
    self._check_operator()
    self._check_not_draining()
    extcall market.commit_bid(job_id, spec, commitment)


@external
def reveal_bid(job_id: uint256, spec: JobSpec, price: uint256, salt: bytes32):
    """
    @notice Reveals the pool's sealed ask.
    @param job_id The job.
    @param spec Its terms.
    @param price The ask, token units per GPU-hour.
    @param salt The salt of the commitment.
    """
    self._check_operator()
    extcall market.reveal_bid(job_id, spec, price, salt)


@external
@nonreentrant
def take_job(job_id: uint256, spec: JobSpec) -> uint8:
    """
    @notice Takes a slot of an instant job at the pool's price floor.
    @dev Non-reentrant: the market moves escrow.
    @param job_id The job.
    @param spec Its terms.
    @return The slot taken.
    """
    self._check_operator()
    self._check_not_draining()
    return extcall market.take_job(job_id, spec)


@external
def assign(job_id: uint256, spec: JobSpec, slot: uint8, member: address):
    """
    @notice Assigns a slot the pool leased to `member`, or moves it to another
            member while no result is committed. The member must be bonded with
            at least `min_member_stake` and have the devices the job needs; its
            stake answers first for the slot.
    @param job_id The job.
    @param spec Its terms.
    @param slot The pool's slot.
    @param member The member that runs it.
    """
    self._check_operator()
    index: uint256 = convert(slot, uint256)
    s: MarketSlot = self._pool_slot(job_id, spec, index)
    assert s.status == SLOT_ASSIGNED, "pool: slot is not awaiting work"
    m: Member = self.members[member]
    assert m.joined and m.stake >= min_member_stake, "pool: member stake below minimum"
    assert m.gpus >= spec.gpus, "pool: member has too few devices"
    assert m.memory_mb >= spec.min_memory_mb, "pool: member has too little memory"
    previous: address = self.assignments[job_id][index]
    assert previous != member, "pool: slot already assigned to the member"
    if previous == empty(address):
        self.open_assignments += 1
    else:
        self.members[previous].assignments -= 1
    self.assignments[job_id][index] = member
    self.members[member].assignments += 1
    log SlotAssigned(job_id=job_id, slot=slot, member=member, previous=previous)


@external
def commit_result(job_id: uint256, spec: JobSpec, slot: uint8, result_root: bytes32, gpu_seconds: uint64):
    """
    @notice Commits the result of an assigned slot for the pool. The operator or
            the assigned member may call.
    @param job_id The job.
    @param spec Its terms.
    @param slot The pool's slot.
    @param result_root Merkle root of the outputs.
    @param gpu_seconds GPU-seconds claimed.
    """
    member: address = self.assignments[job_id][convert(slot, uint256)]
    assert member != empty(address), "pool: slot not assigned"
    assert msg.sender == operator or msg.sender == member, "pool: caller is not the operator or the member"
    extcall market.commit_result(job_id, spec, slot, result_root, gpu_seconds)


# ---------------------------------------------------------------- settlement


@external
@nonreentrant
def settle(job_id: uint256, spec: JobSpec, slot: uint8):
    """
    @notice Books the outcome of one of the pool's slots to its member; anyone
            may call. When the market has not settled the slot yet the pool
            settles it there and books exactly what it received or lost. When
            someone else settled it first, the pool computes the amount from the
            slot and the market's terms, never more than what arrived unbooked.
            Paid: the member is credited the pay less the operator's fee.
            Slashed: the loss is taken from the member's stake, then from every
            member's stake pro rata. A no-show the member reported: the no-show fee,
            booked as pay. Otherwise refunded or released: no money moves.
    @dev Non-reentrant: calls the market, which pays and slashes.
    @param job_id The job.
    @param spec Its terms.
    @param slot The pool's slot.
    """
    index: uint256 = convert(slot, uint256)
    s: MarketSlot = self._pool_slot(job_id, spec, index)
    assert not self.booked[job_id][index], "pool: slot already booked"
    member: address = self.assignments[job_id][index]

    income: uint256 = 0
    loss: uint256 = 0
    if s.status & SLOT_FINAL == 0:
        # Settle at the market ourselves and measure exactly what changed.
        credit_before: uint256 = staticcall market.credits(self)
        stake_before: uint256 = staticcall registry.total_stake(self)
        extcall market.settle(job_id, spec, slot)
        income = staticcall market.credits(self) - credit_before
        loss = stake_before - staticcall registry.total_stake(self)
        s = staticcall market.slots(job_id, index)
    elif s.status == SLOT_PAID:
        # Settled by someone else: what the market paid, bounded by what arrived unbooked.
        slot_value: uint256 = s.price * convert(spec.max_gpu_seconds, uint256) // SECONDS_PER_HOUR
        paid: uint256 = min(s.price * convert(s.gpu_seconds, uint256) // SECONDS_PER_HOUR, slot_value)
        expected: uint256 = paid - paid * staticcall market.fee_bps() // BPS
        # The slot's own terms: the bond its dispute paid and the base slash it was leased under.
        claimed: uint256 = convert(staticcall market.over_claims(job_id, index), uint256)
        if claimed > 0:
            # A verifier cut the claim: no bond for the pool, and the stake paid for the cut.
            cut: uint256 = claimed - convert(s.gpu_seconds, uint256)
            if cut * BPS > claimed * OVER_CLAIM_TOLERANCE_BPS:
                collateral: uint256 = slot_value + staticcall market.base_slashes(job_id, index)
                loss = min(collateral * cut // claimed, self._unbooked_loss())
        else:
            expected += staticcall market.dispute_bonds(job_id, index)
        income = min(expected, self._unbooked_income())
    elif s.status == SLOT_SLASHED:
        slot_value: uint256 = s.price * convert(spec.max_gpu_seconds, uint256) // SECONDS_PER_HOUR
        loss = min(slot_value + staticcall market.base_slashes(job_id, index), self._unbooked_loss())
    elif s.status == SLOT_REFUNDED and s.result_root == NO_SHOW_ROOT:
        # A no-show the member reported: the market paid the pool the no-show fee.
        fee: uint256 = s.price * convert(spec.max_gpu_seconds, uint256) // SECONDS_PER_HOUR * NO_SHOW_FEE_BPS // BPS
        income = min(fee - fee * staticcall market.fee_bps() // BPS, self._unbooked_income())

    # Effects: the slot is booked and the assignment closed.
    self.booked[job_id][index] = True
    if member != empty(address):
        self.members[member].assignments -= 1
        self.open_assignments -= 1

    operator_fee: uint256 = 0
    member_pay: uint256 = 0
    gpu_seconds: uint64 = 0
    if income > 0:
        self.total_income_booked += income
        if member == empty(address):
            # Unreachable through the pool (a result needs an assignment); the operator keeps it.
            operator_fee = income
        else:
            operator_fee = income * fee_bps // BPS
            member_pay = income - operator_fee
        self._credit(member, member_pay)
        self._credit(operator, operator_fee)
    if s.status == SLOT_PAID and member != empty(address):
        gpu_seconds = s.gpu_seconds
        self.members[member].gpu_seconds += convert(gpu_seconds, uint256)
    if loss > 0:
        self.booked_registry_stake -= loss
        self._book_loss(job_id, member, loss)
    if member != empty(address):
        m: Member = self.members[member]
        if m.stake + m.unbonding == 0 and m.assignments == 0:
            # Slashed to nothing with no work left: the member leaves; its credit stays withdrawable.
            self._remove(member)
    log SlotBooked(
        job_id=job_id,
        slot=slot,
        member=member,
        status=s.status,
        gpu_seconds=gpu_seconds,
        income=income,
        member_pay=member_pay,
        operator_fee=operator_fee,
        loss=loss,
    )


@external
@nonreentrant
def reconcile():
    """
    @notice Books what reached or left the pool unbooked once no assignment is
            open: income the market credited beyond the booked pay (rounding,
            terms changed between a settlement and its booking) and tokens sent
            to the pool go to the operator; a slash no assignment explains is
            taken from every member's stake pro rata. Anyone may call.
    @dev Non-reentrant: books money.
    """
    assert self.open_assignments == 0, "pool: assignments still open"
    income: uint256 = self._unbooked_income()
    stray: uint256 = self._stray()
    loss: uint256 = self._unbooked_loss()
    assert income + stray + loss > 0, "pool: nothing to reconcile"
    if income > 0:
        self.total_income_booked += income
    # Tokens sent to the pool directly count as collected cash.
    self.cash += stray
    self._credit(operator, income + stray)
    if loss > 0:
        self.booked_registry_stake -= loss
        self._book_loss(0, empty(address), loss)
    log Reconciled(caller=msg.sender, income=income + stray, loss=loss)


@external
@nonreentrant
def collect() -> uint256:
    """
    @notice Withdraws the pool's credit at the market into the pool; anyone may call.
    @dev Non-reentrant: moves tokens in.
    @return The amount collected.
    """
    return self._collect()


@external
@nonreentrant
def withdraw() -> uint256:
    """
    @notice Withdraws all of the caller's credit (a member's pay or the
            operator's fees), collecting from the market first if needed.
    @dev Non-reentrant: moves tokens out. The credit is zeroed before the transfer.
    @return The amount withdrawn.
    """
    amount: uint256 = self.credits[msg.sender]
    assert amount > 0, "pool: nothing to withdraw"
    if self.cash < amount:
        self._collect()
    # First zero the credit, then send the tokens.
    self.credits[msg.sender] = 0
    self.total_credits -= amount
    self.cash -= amount
    log CreditWithdrawn(account=msg.sender, amount=amount)
    assert extcall token.transfer(msg.sender, amount, default_return_value=True), "pool: transfer failed"
    return amount


# ---------------------------------------------------------------- views


@external
@view
def member_count() -> uint256:
    """
    @notice Number of members.
    @return The length of `member_list`.
    """
    return len(self.member_list)


@external
@view
def unattributed() -> (uint256, uint256):
    """
    @notice What reached and what left the pool without being booked yet.
    @return Income (market credit and tokens sent to the pool) and loss (slashes).
    """
    return self._unbooked_income() + self._stray(), self._unbooked_loss()


@external
@view
def draining() -> bool:
    """
    @notice Whether bidding is paused so that members' exits can leave: a
            batch's unbonding has passed, or released stake waits in a member's
            pot, and the pool holds leases.
    @return True while commit_bid and take_job revert.
    """
    return self._draining()


# ---------------------------------------------------------------- internal


@internal
def _pull_and_bond(owner: address, amount: uint256):
    self.booked_registry_stake += amount
    assert extcall token.transferFrom(owner, self, amount, default_return_value=True), "pool: transfer failed"
    self._bond(amount)


@internal
def _bond(amount: uint256):
    # Exactly `amount` is approved and staked: the registry never holds an open allowance.
    assert extcall token.approve(registry.address, amount, default_return_value=True), "pool: approve failed"
    extcall registry.stake(amount)


@internal
def _sync():
    reg: RegistryStake = staticcall registry.stakes(self)
    if reg.unbonding > 0 and block.timestamp >= reg.unbond_at and reg.active_jobs == 0:
        # A batch is out of the registry: it waits here for its members.
        self.released += reg.unbonding
        self.booked_registry_stake -= reg.unbonding
        log RegistryStakeReleased(amount=reg.unbonding)
        extcall registry.withdraw_unbonded()
        reg.unbonding = 0
        # Each exit due now gets its pot, in member order, before a later one can claim the tokens.
        free: uint256 = self.released - self.earmarked
        for a: address in self.member_list:
            if free == 0:
                break
            m: Member = self.members[a]
            if m.unbonding > 0 and block.timestamp >= m.unbond_at:
                add: uint256 = min(m.unbonding - self.pots[a], free)
                self.pots[a] += add
                self.earmarked += add
                free -= add
    owed: uint256 = self.total_unbonding
    if self.released > owed:
        # Losses booked to leaving members' released stake: the rest bonds back.
        extra: uint256 = self.released - owed
        self.released = owed
        self.booked_registry_stake += extra
        log Restaked(amount=extra)
        self._bond(extra)
    elif reg.unbonding == 0:
        # One batch in flight at a time: a new request would restart the registry's clock.
        # Only free stake may unbond: what running leases lock stays until they end.
        need: uint256 = min(owed - self.released, reg.active - min(reg.locked, reg.active))
        if need > 0:
            extcall registry.request_unbond(need)
            log RegistryUnbondRequested(amount=need, unbond_at=(staticcall registry.stakes(self)).unbond_at)


@internal
def _collect() -> uint256:
    amount: uint256 = staticcall market.credits(self)
    assert amount > 0, "pool: nothing to collect"
    self.cash += amount
    self.total_collected += amount
    log Collected(caller=msg.sender, amount=amount)
    received: uint256 = extcall market.withdraw()
    assert received == amount, "pool: market paid a different amount"
    return amount


@internal
def _book_loss(job_id: uint256, culprit: address, loss: uint256):
    # The culprit's stake answers first, bonded then unbonding.
    rest: uint256 = loss
    if culprit != empty(address):
        rest -= self._cut(culprit, rest, job_id, True)
    if rest == 0:
        return
    # Then every member pro rata to its stake; the rounding remainder in list order.
    total: uint256 = self.total_stake + self.total_unbonding
    if total == 0:
        return
    rest = min(rest, total)
    shares: uint256 = 0
    for a: address in self.member_list:
        w: uint256 = self.members[a].stake + self.members[a].unbonding
        shares += self._cut(a, rest * w // total, job_id, False)
    remainder: uint256 = rest - shares
    for a: address in self.member_list:
        if remainder == 0:
            break
        remainder -= self._cut(a, remainder, job_id, False)


@internal
def _cut(member: address, amount: uint256, job_id: uint256, culprit: bool) -> uint256:
    m: Member = self.members[member]
    taken: uint256 = min(amount, m.stake + m.unbonding)
    if taken == 0:
        return 0
    from_stake: uint256 = min(taken, m.stake)
    self.members[member].stake = m.stake - from_stake
    self.members[member].unbonding = m.unbonding - (taken - from_stake)
    pot: uint256 = self.pots[member]
    if pot > m.unbonding - (taken - from_stake):
        # A pot is never more than the unbonding stake it pays out.
        self.earmarked -= pot - (m.unbonding - (taken - from_stake))
        self.pots[member] = m.unbonding - (taken - from_stake)
    self.total_stake -= from_stake
    self.total_unbonding -= taken - from_stake
    log MemberSlashed(member=member, job_id=job_id, amount=taken, culprit=culprit)
    return taken


@internal
def _remove(member: address):
    # Swap-and-pop out of the member list; the member's credit stays withdrawable.
    n: uint256 = len(self.member_list)
    for i: uint256 in range(n, bound=MAX_MEMBERS):
        if self.member_list[i] == member:
            self.member_list[i] = self.member_list[n - 1]
            self.member_list.pop()
            break
    self.total_gpus -= convert(self.members[member].gpus, uint256)
    self.members[member] = empty(Member)


@internal
def _credit(account: address, amount: uint256):
    if amount == 0:
        return
    self.credits[account] += amount
    self.total_credits += amount


@internal
@view
def _pool_slot(job_id: uint256, spec: JobSpec, index: uint256) -> MarketSlot:
    # The spec must be the job's (the member's devices are checked against it).
    job_hash: bytes32 = (staticcall market.jobs(job_id)).spec_hash
    assert job_hash != empty(bytes32), "pool: unknown job"
    assert job_hash == keccak256(abi_encode(spec)), "pool: spec does not match job"
    assert index < convert(spec.redundancy, uint256), "pool: no such slot"
    s: MarketSlot = staticcall market.slots(job_id, index)
    assert s.provider == self, "pool: slot is not the pool's"
    return s


@internal
@view
def _unbooked_income() -> uint256:
    # Market credit that arrived and is not booked: received - booked.
    return staticcall market.credits(self) + self.total_collected - self.total_income_booked


@internal
@view
def _unbooked_loss() -> uint256:
    actual: uint256 = staticcall registry.total_stake(self)
    if actual >= self.booked_registry_stake:
        return 0
    return self.booked_registry_stake - actual


@internal
@view
def _stray() -> uint256:
    # Tokens held beyond the stake released for exits and the collected cash.
    return staticcall token.balanceOf(self) - self.released - self.cash


@internal
@view
def _draining() -> bool:
    reg: RegistryStake = staticcall registry.stakes(self)
    # A batch due at the registry, or released stake earmarked for a member that may only leave
    # once no lease runs: new leases wait until the running ones end.
    return reg.active_jobs > 0 and (
        (reg.unbonding > 0 and block.timestamp >= reg.unbond_at) or self.earmarked > 0
    )


@internal
@view
def _check_not_draining():
    assert not self._draining(), "pool: draining for member exits"


@internal
@view
def _check_operator():
    assert msg.sender == operator, "pool: caller is not the operator"


@internal
@pure
def _check_devices(gpus: uint16, memory_mb: uint32, signer: address, endpoint: String[128]):
    assert gpus > 0, "pool: no devices"
    assert memory_mb > 0, "pool: no device memory"
    assert signer != empty(address), "pool: no signer"
    assert len(endpoint) > 0, "pool: no endpoint"
