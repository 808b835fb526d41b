# pragma version ~=0.4.3
# pragma nonreentrancy off
# pragma experimental-codegen
# pragma optimize codesize
"""
@title flopex job market and escrow
@custom:contract-name JobMarket
@license GNU Affero General Public License v3.0 only
@notice Requesters post jobs and lock `redundancy x max_price x max_gpu_hours`
        in escrow; staked providers win them in a sealed reverse-Vickrey
        auction (commit, reveal; the k lowest asks win and are paid the
        (k+1)-th lowest ask, never above the requester's max) or take them
        instantly at their posted price. Winners commit a result root and the
        GPU-seconds they claim; verifiers attest (accept with verified
        GPU-seconds, reject, or void); requesters may accept or dispute within
        the challenge window. Settlement pays verified GPU-seconds at the
        lease price, a fee to the treasury and the rest back to the requester;
        a provider that misses its deadline or is rejected is slashed and the
        requester refunded. Every payment is a credit withdrawn by its owner, or
        a transfer at once to an owner that asked for it (`set_direct_payout`).
@dev To keep gas low a job's immutable terms (`JobSpec`) are stored as one
     hash; every call that needs them takes the spec as an argument and it is
     checked against the hash. The spec is in the `JobPosted` event.
     Invariant: `token.balanceOf(self) == sum(job.escrow) + sum(credits)`; an open dispute's
     bond is held in its job's escrow.
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable

from . import market_terms

initializes: ownable

exports: (ownable.owner, ownable.transfer_ownership)


interface IProviderRegistry:
    def is_eligible(provider: address, device_kind: uint8, gpus: uint16, min_memory_mb: uint32, collateral: uint256) -> bool: view
    def price_floor(provider: address) -> uint256: view
    def is_active_verifier(account: address) -> bool: view
    def lock(provider: address, amount: uint256) -> bool: nonpayable
    def lock_matching(provider: address, amount: uint256, device_kind: uint8, gpus: uint16, min_memory_mb: uint32) -> bool: nonpayable
    def release(provider: address, amount: uint256, completed: bool): nonpayable
    def slash(provider: address, amount: uint256) -> uint256: nonpayable


# @dev Verification policies.
POLICY_NONE: public(constant(uint8)) = 0
POLICY_REDUNDANT: public(constant(uint8)) = 1
POLICY_REPLAY: public(constant(uint8)) = 2
POLICY_FREIVALDS: public(constant(uint8)) = 3
POLICY_OPTIMISTIC: public(constant(uint8)) = 4

# @dev Auction modes.
AUCTION_SEALED: public(constant(uint8)) = 0
AUCTION_INSTANT: public(constant(uint8)) = 1

# @dev Attestation outcomes.
OUTCOME_ACCEPT: public(constant(uint8)) = 0
OUTCOME_REJECT: public(constant(uint8)) = 1
OUTCOME_VOID: public(constant(uint8)) = 2

# @dev Most providers one job may lease at once.
MAX_REDUNDANCY: public(constant(uint8)) = 5
MAX_SLOTS: constant(uint256) = 5
# @dev Seconds in an hour: prices are per GPU-hour, work is in GPU-seconds.
SECONDS_PER_HOUR: constant(uint256) = 3_600
# @dev Basis points in one.
BPS: constant(uint256) = 10_000
# @dev Asks are packed as `price << 160 | provider`; prices must fit in 96 bits.
MAX_PRICE: public(constant(uint256)) = 2**96 - 1
# @dev Largest dispute bond the owner may set (keeps a job's escrow within its packed 160 bits).
MAX_DISPUTE_BOND: public(constant(uint256)) = 2**128
# @dev Largest base slash the owner may set (a slot keeps the one it was leased under in 96 bits).
MAX_BASE_SLASH: public(constant(uint256)) = 2**96 - 1
# @dev Masks of the packed storage words.
MASK_64: constant(uint256) = 2**64 - 1
MASK_96: constant(uint256) = 2**96 - 1
MASK_160: constant(uint256) = 2**160 - 1
MASK_192: constant(uint256) = 2**192 - 1
# @dev Set in a slot's head when its `slot_bonds` word holds a dispute's bond or a cut claim: a settlement
# reads that word only then, so the happy path pays nothing for disputes.
HEAD_FLAGGED: constant(uint256) = 2**240
MASK_254: constant(uint256) = 2**254 - 1
# @dev Set in every credit word once written (see `credit_words`).
CREDIT_SEEN: constant(uint256) = 2**255
# @dev Set in the credit word of an account paid at once (see `set_direct_payout`).
CREDIT_DIRECT: constant(uint256) = 2**254
# @dev Hard limit of every window bound the owner may set: 30 days.
MAX_WINDOW: public(constant(uint64)) = 2_592_000
# @dev Default bounds: bid (and reveal) window 1 day; run duration 8 days (a bundle's longest timeout, 7 days,
# plus the requester's slack); challenge window 7 days.
DEFAULT_MAX_BID_WINDOW: constant(uint64) = 86_400
DEFAULT_MAX_RUN_DURATION: constant(uint64) = 691_200
DEFAULT_MAX_CHALLENGE_WINDOW: constant(uint64) = 604_800
# @dev Share of a slot's value a requester that never delivered a runnable bundle pays its provider.
NO_SHOW_FEE_BPS: public(constant(uint256)) = market_terms.NO_SHOW_FEE_BPS
# @dev The result root a provider commits, with 0 GPU-seconds, to report that the requester delivered no runnable bundle.
NO_SHOW_ROOT: public(constant(bytes32)) = market_terms.NO_SHOW_ROOT
# @dev Cuts of a claim up to this share are billing noise: paid on the verified GPU-seconds, not penalised.
OVER_CLAIM_TOLERANCE_BPS: public(constant(uint256)) = market_terms.OVER_CLAIM_TOLERANCE_BPS
# @dev Seconds between queueing an owner's change and making it: two days' notice.
CHANGE_DELAY: public(constant(uint256)) = 172_800


flag JobStatus:
    OPEN  # taking bids
    LEASED  # every slot has a provider; work under way or settling
    CLOSED  # every slot settled
    EXPIRED  # too few bids: escrow refunded
    CANCELLED  # withdrawn by the requester before its bid deadline


flag SlotStatus:
    ASSIGNED  # leased to a provider, no result yet
    COMMITTED  # result root and claimed GPU-seconds on chain
    DISPUTED  # a staked challenger disputed the result; awaits a verifier
    ACCEPTED  # accepted by the requester or a verifier; awaits settlement
    REJECTED  # rejected by a verifier; awaits settlement (refund and slash)
    VOIDED  # voided by a verifier (no fault shown); awaits settlement (refund)
    PAID  # settled: provider paid
    SLASHED  # settled: requester refunded, provider slashed
    REFUNDED  # settled: requester refunded, nobody slashed
    RELEASED  # the job was cancelled or expired before the slot started
    NO_SHOW  # its provider reported that the requester never delivered a runnable bundle; awaits settlement


struct JobSpec:
    requester: address  # who posts and pays
    bundle_hash: bytes32  # sha256 of the job bundle
    device_kind: uint8  # 0 cpu, 1 cuda
    gpus: uint16  # devices the job needs on one provider
    min_memory_mb: uint32  # memory per device
    policy: uint8  # POLICY_*
    auction: uint8  # AUCTION_*
    redundancy: uint8  # k providers run it
    max_price: uint256  # token units per GPU-hour the requester pays at most
    max_gpu_seconds: uint64  # GPU-seconds paid at most, per provider
    bid_deadline: uint64  # sealed: end of commits; instant: end of takes
    reveal_deadline: uint64  # sealed: end of reveals (ignored for instant)
    run_duration: uint64  # seconds from the lease to the result commit deadline
    challenge_window: uint64  # seconds after a commit for accepting, disputing or attesting


struct Job:
    spec_hash: bytes32  # keccak256 of the ABI-encoded JobSpec
    status: JobStatus  # where the job stands
    escrow: uint256  # tokens held for this job
    count: uint8  # OPEN: asks kept or slots taken; LEASED: slots not yet settled
    lease_start: uint64  # when the last slot was leased


struct Slot:
    provider: address  # who runs it
    status: SlotStatus  # where it stands
    price: uint256  # token units per GPU-hour it is paid
    result_root: bytes32  # Merkle root of the outputs
    gpu_seconds: uint64  # claimed, then as verified
    committed_at: uint64  # when the result was committed
    disputer: address  # who disputed, holding a bond here


# @dev The token jobs are paid in.
token: public(immutable(IERC20))
# @dev The provider registry: eligibility, stakes, slashing.
registry: public(immutable(IProviderRegistry))
# @dev Who receives the protocol fee and the rest of slashes, the protocol fee on each payment and the
# share of a slash credited to the requester (both in basis points), in the one word a settlement reads:
# treasury | fee_bps << 160 | slash_requester_bps << 176 (read them through `treasury`, `fee_bps` and
# `slash_requester_bps`).
fee_word: uint256
# @dev Bond a challenger puts up to dispute a result.
dispute_bond: public(uint256)
# @dev Slashed on top of the slot's value when a provider fails.
base_slash: public(uint256)

# @dev Window bounds a job must keep, and the number of jobs posted (ids start at 1), in the one word a
# post reads: max bid window | max run duration << 64 | max challenge window << 128 | job count << 192
# (read them through `window_bounds` and `job_count`).
bounds_word: uint256
# Jobs and slots are packed into few storage words (read them through `jobs` and `slots`):
# a job's first write then costs one new word instead of five, a slot's two instead of seven.
# @dev Each job's spec hash.
job_hashes: HashMap[uint256, bytes32]
# @dev Each job's mutable state: escrow | status << 160 | count << 176 | lease_start << 184.
job_words: HashMap[uint256, uint256]
# @dev Each slot's head: provider | status << 160 | committed_at << 176.
slot_heads: HashMap[uint256, HashMap[uint256, uint256]]
# @dev Each slot's terms: price | gpu_seconds << 96 | base_slash << 160 (the base slash when it was
# leased: its collateral, value at price + base slash, is what the registry locked and a slash takes).
# While a sealed auction is open the same words hold its lowest revealed asks, ascending:
# price | provider << 96 at rank 0..redundancy; a winner's slot is then written over its ask (a word
# rewritten, 2,900 gas, instead of a new one, 22,100) and the asks left over are cleared.
slot_terms: HashMap[uint256, HashMap[uint256, uint256]]
# @dev Each slot's result root.
slot_roots: HashMap[uint256, HashMap[uint256, bytes32]]
# @dev Who disputed each slot.
slot_disputers: HashMap[uint256, HashMap[uint256, address]]
# @dev Sealed-bid commitments: job id -> provider -> keccak256(abi_encode(job_id, provider, price, salt)).
commitments: public(HashMap[uint256, HashMap[address, bytes32]])
# @dev Each slot's dispute bond and over-claim: bond | claim << 160. The bond is the one paid at the
# dispute (the `dispute_bond` parameter may change before the slot settles); the claim is kept only
# when a verifier accepted fewer GPU-seconds than it (the slot's GPU-seconds are then the verified ones).
slot_bonds: HashMap[uint256, HashMap[uint256, uint256]]
# @dev Owner's changes waiting out CHANGE_DELAY: keccak256 of the change's calldata -> earliest time to make it.
queued_changes: public(HashMap[bytes32, uint256])
# @dev Each account's credit word: CREDIT_SEEN | CREDIT_DIRECT if paid at once | the tokens it can
# withdraw (read them through `credits` and `direct_payout`). A withdrawal leaves the flags, so the word
# stays non-zero and the account's next credit rewrites a word (2,900 gas) instead of creating one (20,000).
credit_words: HashMap[address, uint256]
# @dev Sum of all credits, for the solvency invariant.
total_credits: public(uint256)
# @dev The verifier court: the only account whose rulings `attest` takes (set once by the owner).
court: public(address)


event JobPosted:
    job_id: indexed(uint256)
    requester: indexed(address)
    spec: JobSpec
    escrow: uint256


event JobCancelled:
    job_id: indexed(uint256)
    refunded: uint256


event JobExpired:
    job_id: indexed(uint256)
    asks: uint8
    refunded: uint256


event JobLeased:
    job_id: indexed(uint256)
    clearing_price: uint256
    refunded: uint256


event JobClosed:
    job_id: indexed(uint256)


event BidCommitted:
    job_id: indexed(uint256)
    provider: indexed(address)


event BidRevealed:
    job_id: indexed(uint256)
    provider: indexed(address)
    price: uint256
    rank: uint8


event SlotLeased:
    job_id: indexed(uint256)
    slot: uint8
    provider: indexed(address)
    price: uint256


event ResultCommitted:
    job_id: indexed(uint256)
    slot: uint8
    provider: indexed(address)
    result_root: bytes32
    gpu_seconds: uint64


event ResultAccepted:
    job_id: indexed(uint256)
    slot: uint8
    gpu_seconds: uint64


event ResultDisputed:
    job_id: indexed(uint256)
    slot: uint8
    disputer: indexed(address)
    bond: uint256


event ResultAttested:
    job_id: indexed(uint256)
    slot: uint8
    verifier: indexed(address)
    outcome: uint8
    claimed_gpu_seconds: uint64
    verified_gpu_seconds: uint64


event SlotSettled:
    job_id: indexed(uint256)
    slot: uint8
    provider: indexed(address)
    status: SlotStatus
    gpu_seconds: uint64
    paid: uint256
    fee: uint256
    refunded: uint256
    slashed: uint256


event BidForfeited:
    job_id: indexed(uint256)
    provider: indexed(address)
    amount: uint256


event ChangeQueued:
    change: indexed(bytes32)
    eta: uint256


event Withdrawn:
    account: indexed(address)
    amount: uint256


event DirectPayoutSet:
    account: indexed(address)
    direct: bool


event WindowBoundsChanged:
    max_bid_window: uint64
    max_run_duration: uint64
    max_challenge_window: uint64


event ParametersChanged:
    treasury: address
    fee_bps: uint256
    dispute_bond: uint256
    base_slash: uint256
    slash_requester_bps: uint256


@deploy
def __init__(
    token_: IERC20,
    registry_: IProviderRegistry,
    treasury_: address,
    fee_bps_: uint256,
    dispute_bond_: uint256,
    base_slash_: uint256,
    slash_requester_bps_: uint256,
):
    """
    @notice Deploys the market; the deployer owns it.
    @param token_ The token jobs are paid in.
    @param registry_ The provider registry.
    @param treasury_ Who receives fees and the rest of slashes.
    @param fee_bps_ Protocol fee in basis points.
    @param dispute_bond_ Bond to dispute a result.
    @param base_slash_ Slashed on top of a failed slot's value.
    @param slash_requester_bps_ Share of a slash that goes to the requester.
    """
    ownable.__init__()
    token = token_
    registry = registry_
    self._set_parameters(treasury_, fee_bps_, dispute_bond_, base_slash_, slash_requester_bps_)
    self._set_window_bounds(DEFAULT_MAX_BID_WINDOW, DEFAULT_MAX_RUN_DURATION, DEFAULT_MAX_CHALLENGE_WINDOW)


@external
def set_window_bounds(max_bid_window: uint64, max_run_duration: uint64, max_challenge_window: uint64):
    """
    @notice Changes the longest windows a new job may ask for, each between 1 second and MAX_WINDOW.
            Jobs already posted keep theirs. The change must have been queued CHANGE_DELAY before.
    @param max_bid_window Longest bid window (post to bid deadline) and reveal window (sealed).
    @param max_run_duration Longest run duration.
    @param max_challenge_window Longest challenge window.
    """
    ownable._check_owner()
    self._take_queued(keccak256(slice(msg.data, 0, 100)))
    self._set_window_bounds(max_bid_window, max_run_duration, max_challenge_window)


@external
@view
def window_bounds() -> (uint64, uint64, uint64):
    """
    @notice The longest windows a new job may ask for.
    @return The max bid (and reveal) window, the max run duration and the max challenge window, in seconds.
    """
    word: uint256 = self.bounds_word
    return (
        convert(word & MASK_64, uint64),
        convert((word >> 64) & MASK_64, uint64),
        convert((word >> 128) & MASK_64, uint64),
    )


@external
@view
def job_count() -> uint256:
    """
    @notice Number of jobs posted; job ids start at 1.
    @return The count.
    """
    return self.bounds_word >> 192


@external
@view
def treasury() -> address:
    """
    @notice Who receives the protocol fee and the rest of slashes.
    @return The treasury's address.
    """
    return convert(self.fee_word & MASK_160, address)


@external
@view
def fee_bps() -> uint256:
    """
    @notice Protocol fee on each payment.
    @return The fee, in basis points.
    """
    return (self.fee_word >> 160) & 65_535


@external
@view
def slash_requester_bps() -> uint256:
    """
    @notice Share of a slash credited to the requester.
    @return The share, in basis points.
    """
    return self.fee_word >> 176


@external
def set_parameters(
    treasury_: address, fee_bps_: uint256, dispute_bond_: uint256, base_slash_: uint256, slash_requester_bps_: uint256
):
    """
    @notice Changes the treasury, fee, dispute bond and slashing terms; the change must have been
            queued CHANGE_DELAY before. Slots keep the base slash and the bond they started with.
    @param treasury_ Who receives fees and the rest of slashes.
    @param fee_bps_ Protocol fee in basis points.
    @param dispute_bond_ Bond to dispute a result.
    @param base_slash_ Slashed on top of a failed slot's value.
    @param slash_requester_bps_ Share of a slash that goes to the requester.
    """
    ownable._check_owner()
    self._take_queued(keccak256(slice(msg.data, 0, 164)))
    self._set_parameters(treasury_, fee_bps_, dispute_bond_, base_slash_, slash_requester_bps_)


@external
def queue_change(change: bytes32):
    """
    @notice Announces an owner's change: `set_parameters` or `set_window_bounds` called with the
            calldata hashed here can be made CHANGE_DELAY from now, once.
    @param change keccak256 of the change's calldata.
    """
    ownable._check_owner()
    eta: uint256 = block.timestamp + CHANGE_DELAY
    self.queued_changes[change] = eta
    log ChangeQueued(change=change, eta=eta)


@external
def set_court(court_: address):
    """
    @notice Names the verifier court, whose rulings alone `attest` takes; it can be set only once,
            before the first job.
    @param court_ The court's address.
    """
    ownable._check_owner()
    assert self.court == empty(address), "market: court already set"
    assert self.bounds_word >> 192 == 0, "market: jobs already posted"
    assert court_ != empty(address), "market: court is the zero address"
    self.court = court_


@external
def set_direct_payout(direct: bool):
    """
    @notice Chooses how the caller is paid: at once, by a token transfer inside the call that pays it
            (a settlement, a refund), or as a credit it withdraws (the default). Direct payment saves
            the withdrawal; a transfer that fails is kept as a credit. Credit already owed stays to withdraw.
    @param direct True to be paid at once, False to be credited.
    """
    word: uint256 = self.credit_words[msg.sender] | CREDIT_SEEN
    if direct:
        word |= CREDIT_DIRECT
    else:
        word &= ~CREDIT_DIRECT
    self.credit_words[msg.sender] = word
    log DirectPayoutSet(account=msg.sender, direct=direct)


# ---------------------------------------------------------------- post


@external
@nonreentrant
def post_job(spec: JobSpec) -> uint256:
    """
    @notice Posts a job and locks `redundancy x max_price x max_gpu_seconds / 3600`
            tokens in escrow (approve the market first).
    @dev Non-reentrant: pulls tokens in.
    @param spec The job's terms; `spec.requester` must be the caller.
    @return The new job's id.
    """
    return self._post(spec)


@external
@nonreentrant
def post_job_with_permit(spec: JobSpec, permit_deadline: uint256, v: uint8, r: bytes32, s: bytes32) -> uint256:
    """
    @notice Posts a job with an EIP-2612 permit instead of a prior approval.
    @dev Non-reentrant: pulls tokens in.
    @param spec The job's terms; `spec.requester` must be the caller.
    @param permit_deadline The permit's deadline.
    @param v The permit signature's v.
    @param r The permit signature's r.
    @param s The permit signature's s.
    @return The new job's id.
    """
    self._permit(self._escrow_for(spec), permit_deadline, v, r, s)
    return self._post(spec)


@external
@nonreentrant
def cancel_job(job_id: uint256, spec: JobSpec):
    """
    @notice Withdraws an open job before its bid deadline and refunds its escrow;
            providers that already took a slot are released unharmed.
    @dev Non-reentrant: credits a refund.
    @param job_id The job.
    @param spec Its terms.
    """
    job: Job = self._load(job_id, spec)
    assert msg.sender == spec.requester, "market: caller is not the requester"
    assert job.status == JobStatus.OPEN, "market: job is not open"
    assert block.timestamp < convert(spec.bid_deadline, uint256), "market: bid deadline passed"
    refund: uint256 = job.escrow
    if spec.auction == AUCTION_INSTANT:
        self._release_taken(job_id, spec, job.count)
    job.status = JobStatus.CANCELLED
    job.escrow = 0
    self._put_job(job_id, job)
    self._credit(spec.requester, refund)
    log JobCancelled(job_id=job_id, refunded=refund)


# ---------------------------------------------------------------- sealed auction


@external
def commit_bid(job_id: uint256, spec: JobSpec, commitment: bytes32):
    """
    @notice Commits a sealed ask: `keccak256(abi_encode(job_id, provider, price, salt))`.
    @param job_id The job.
    @param spec Its terms.
    @param commitment The sealed ask.
    """
    self._check_spec(job_id, spec)
    assert spec.auction == AUCTION_SEALED, "market: not a sealed auction"
    assert self._job(job_id).status == JobStatus.OPEN, "market: job is not open"
    assert block.timestamp < convert(spec.bid_deadline, uint256), "market: bidding closed"
    assert commitment != empty(bytes32), "market: empty commitment"
    assert msg.sender != spec.requester, "market: requester cannot bid on its own job"
    assert self.commitments[job_id][msg.sender] == empty(bytes32), "market: bid already committed"
    # Free stake for the lease's collateral at the max price and for the reveal bond (the base slash),
    # which `forfeit_unrevealed` takes if the bid is not revealed.
    self._check_eligible(msg.sender, spec, self._value(spec.max_price, spec.max_gpu_seconds) + self.base_slash)
    self.commitments[job_id][msg.sender] = commitment
    log BidCommitted(job_id=job_id, provider=msg.sender)


@external
def reveal_bid(job_id: uint256, spec: JobSpec, price: uint256, salt: bytes32):
    """
    @notice Reveals a committed ask after the bid deadline; the lowest
            `redundancy + 1` asks are kept, earlier reveals first among equals.
    @param job_id The job.
    @param spec Its terms.
    @param price The ask, token units per GPU-hour.
    @param salt The salt the commitment was made with.
    """
    self._check_spec(job_id, spec)
    assert spec.auction == AUCTION_SEALED, "market: not a sealed auction"
    job: Job = self._job(job_id)
    assert job.status == JobStatus.OPEN, "market: job is not open"
    assert block.timestamp >= convert(spec.bid_deadline, uint256), "market: bidding still open"
    assert block.timestamp < convert(spec.reveal_deadline, uint256), "market: reveal closed"
    commitment: bytes32 = self.commitments[job_id][msg.sender]
    assert commitment != empty(bytes32), "market: no committed bid"
    assert keccak256(abi_encode(job_id, msg.sender, price, salt)) == commitment, "market: reveal does not match commitment"
    assert price > 0, "market: zero ask"
    assert price <= spec.max_price, "market: ask above max price"
    # The registry is asked once per winner, when the auction ends (registration, devices, collateral),
    # not once per reveal: the bidder was eligible when it committed.
    self.commitments[job_id][msg.sender] = empty(bytes32)

    # Insertion into the sorted list of the lowest `redundancy + 1` asks.
    keep: uint256 = convert(spec.redundancy, uint256) + 1
    n: uint256 = convert(job.count, uint256)
    # An ask is price | provider << 96 in the slot-terms word of its rank (see `slot_terms`).
    packed: uint256 = price | (convert(msg.sender, uint256) << 96)
    rank: uint256 = n
    for i: uint256 in range(n, bound=MAX_SLOTS + 1):
        if price < self.slot_terms[job_id][i] & MASK_96:
            rank = i
            break
    if rank < keep:
        last: uint256 = min(n, keep - 1)
        for j: uint256 in range(last - rank, bound=MAX_SLOTS + 1):
            k: uint256 = last - j
            self.slot_terms[job_id][k] = self.slot_terms[job_id][k - 1]
        self.slot_terms[job_id][rank] = packed
        if n < keep:
            job.count = convert(n + 1, uint8)
            self._put_job(job_id, job)
    log BidRevealed(job_id=job_id, provider=msg.sender, price=price, rank=convert(min(rank, keep), uint8))


@external
@nonreentrant
def finalize_auction(job_id: uint256, spec: JobSpec):
    """
    @notice Ends bidding. Sealed: after the reveal deadline the k lowest asks win
            at the (k+1)-th lowest ask (the max price if there is none). Instant:
            after the bid deadline an unfilled job expires. Too few asks: the
            escrow is refunded. Anyone may call.
    @dev Non-reentrant: credits refunds and calls the registry.
    @param job_id The job.
    @param spec Its terms.
    """
    job: Job = self._load(job_id, spec)
    assert job.status == JobStatus.OPEN, "market: job is not open"
    k: uint256 = convert(spec.redundancy, uint256)
    n: uint256 = convert(job.count, uint256)
    if spec.auction == AUCTION_SEALED:
        assert block.timestamp >= convert(spec.reveal_deadline, uint256), "market: reveal still open"
    else:
        assert block.timestamp >= convert(spec.bid_deadline, uint256), "market: bidding still open"

    clearing: uint256 = spec.max_price
    slot_value: uint256 = 0
    asks: uint8 = job.count
    won: uint256 = n
    if spec.auction == AUCTION_SEALED:
        won = 0
    if n >= k and spec.auction == AUCTION_SEALED:
        # Sealed with k asks: uniform price at the (k+1)-th ask, capped by the max. The winners are
        # checked and their collateral locked now: a winner that unbonded, deregistered or changed its
        # devices since its commit is skipped and the next ask wins in its place, at the same price
        # (never below its ask).
        if n > k:
            clearing = self.slot_terms[job_id][k] & MASK_96
        slot_value = self._value(clearing, spec.max_gpu_seconds)
        collateral: uint256 = slot_value + self.base_slash
        for i: uint256 in range(n, bound=MAX_SLOTS + 1):
            if won == k:
                break
            provider: address = convert(self.slot_terms[job_id][i] >> 96, address)
            if extcall registry.lock_matching(provider, collateral, spec.device_kind, spec.gpus, spec.min_memory_mb):
                self._assign(job_id, won, provider, clearing)
                log SlotLeased(job_id=job_id, slot=convert(won, uint8), provider=provider, price=clearing)
                won += 1
    if spec.auction == AUCTION_SEALED:
        # The asks no slot was written over.
        for i: uint256 in range(won, n, bound=MAX_SLOTS + 1):
            self.slot_terms[job_id][i] = 0

    if won < k:
        # Too few asks (or winners able to lock their collateral): no lease, all back to the requester.
        refund: uint256 = job.escrow
        self._release_taken(job_id, spec, convert(won, uint8))
        job.status = JobStatus.EXPIRED
        job.escrow = 0
        self._put_job(job_id, job)
        self._credit(spec.requester, refund)
        log JobExpired(job_id=job_id, asks=asks, refunded=refund)
        return

    refund: uint256 = job.escrow - slot_value * k
    self._start_lease(job_id, job, spec, refund, clearing)


@external
@nonreentrant
def forfeit_unrevealed(job_id: uint256, spec: JobSpec, provider: address) -> uint256:
    """
    @notice Takes the reveal bond (the base slash) from a provider that committed a sealed bid and
            did not reveal it by the reveal deadline, for the treasury (never the requester: a
            requester's shill bids would get it back). Anyone may call; a cancelled job's bids are void.
    @dev Non-reentrant: calls the registry.
    @param job_id The job.
    @param spec Its terms.
    @param provider The bidder.
    @return The amount taken.
    """
    job: Job = self._load(job_id, spec)
    assert job.status != JobStatus.CANCELLED, "market: job was cancelled"
    assert block.timestamp >= convert(spec.reveal_deadline, uint256), "market: reveal still open"
    assert self.commitments[job_id][provider] != empty(bytes32), "market: no unrevealed bid"
    self.commitments[job_id][provider] = empty(bytes32)
    taken: uint256 = extcall registry.slash(provider, self.base_slash)
    self._credit(convert(self.fee_word & MASK_160, address), taken)
    log BidForfeited(job_id=job_id, provider=provider, amount=taken)
    return taken


# ---------------------------------------------------------------- instant auction


@external
@nonreentrant
def take_job(job_id: uint256, spec: JobSpec) -> uint8:
    """
    @notice Takes a slot of an instant job at the caller's posted price floor,
            which must be at or below the job's max price. The job is leased
            when its last slot is taken.
    @dev Non-reentrant: credits a refund and calls the registry.
    @param job_id The job.
    @param spec Its terms.
    @return The slot taken.
    """
    job: Job = self._load(job_id, spec)
    assert spec.auction == AUCTION_INSTANT, "market: not an instant auction"
    assert job.status == JobStatus.OPEN, "market: job is not open"
    assert block.timestamp < convert(spec.bid_deadline, uint256), "market: bidding closed"
    assert msg.sender != spec.requester, "market: requester cannot take its own job"
    price: uint256 = staticcall registry.price_floor(msg.sender)
    assert price <= spec.max_price, "market: price floor above max price"
    n: uint256 = convert(job.count, uint256)
    for i: uint256 in range(n, bound=MAX_SLOTS):
        assert self._slot(job_id, i).provider != msg.sender, "market: provider already holds a slot"
    self._assign(job_id, n, msg.sender, price)
    # Registered, with the minimum stake, the devices and free stake for the lease's collateral.
    assert extcall registry.lock_matching(
        msg.sender, self._value(price, spec.max_gpu_seconds) + self.base_slash, spec.device_kind, spec.gpus, spec.min_memory_mb
    ), "market: provider not eligible"
    log SlotLeased(job_id=job_id, slot=convert(n, uint8), provider=msg.sender, price=price)
    # Escrow above this provider's price is refunded at once.
    # A difference of slot values, so that no rounding dust is left in escrow.
    refund: uint256 = self._value(spec.max_price, spec.max_gpu_seconds) - self._value(price, spec.max_gpu_seconds)
    job.count += 1
    if job.count == spec.redundancy:
        self._start_lease(job_id, job, spec, refund, price)
    else:
        job.escrow -= refund
        self._put_job(job_id, job)
        self._credit(spec.requester, refund)
    return convert(n, uint8)


# ---------------------------------------------------------------- results


@external
def commit_result(job_id: uint256, spec: JobSpec, slot: uint8, result_root: bytes32, gpu_seconds: uint64):
    """
    @notice Commits the result of a leased slot before the run deadline: the
            Merkle root of its outputs and the GPU-seconds it claims, which can
            be no more than the job's max nor the devices' time since the lease.
            NO_SHOW_ROOT with 0 GPU-seconds reports instead that the requester delivered no
            runnable bundle (none uploaded, one the worker refused, or never started), from a
            quarter of the run window after the lease: the slot then settles without a slash,
            the provider paid NO_SHOW_FEE_BPS of its value for the device time held.
    @param job_id The job.
    @param spec Its terms.
    @param slot The caller's slot.
    @param result_root Merkle root of the outputs.
    @param gpu_seconds GPU-seconds claimed.
    """
    self._check_spec(job_id, spec)
    index: uint256 = convert(slot, uint256)
    s: Slot = self._slot(job_id, index)
    job: Job = self._job(job_id)
    assert msg.sender == s.provider, "market: caller is not the slot's provider"
    assert job.status == JobStatus.LEASED, "market: job is not leased"
    assert s.status == SlotStatus.ASSIGNED, "market: result already committed"
    lease_start: uint64 = job.lease_start
    # Deadlines are summed in uint256: a uint64 sum of a time and a long window could overflow
    # and leave the slot unable to commit or settle.
    assert block.timestamp <= convert(lease_start, uint256) + convert(spec.run_duration, uint256), "market: run deadline passed"
    assert gpu_seconds <= spec.max_gpu_seconds, "market: claim above max GPU-seconds"
    held: uint256 = (block.timestamp - convert(lease_start, uint256)) * convert(spec.gpus, uint256)
    assert convert(gpu_seconds, uint256) <= held, "market: claim above device time held"
    s.status = SlotStatus.COMMITTED
    if result_root == NO_SHOW_ROOT:
        assert gpu_seconds == 0, "market: a no-show claims no GPU-seconds"
        assert block.timestamp - convert(lease_start, uint256) >= convert(spec.run_duration // 4, uint256), "market: too early to report a no-show"
        s.status = SlotStatus.NO_SHOW
    s.gpu_seconds = gpu_seconds
    s.committed_at = convert(block.timestamp, uint64)
    self._put_slot(job_id, index, s)
    self.slot_roots[job_id][index] = result_root
    log ResultCommitted(
        job_id=job_id, slot=slot, provider=msg.sender, result_root=result_root, gpu_seconds=gpu_seconds
    )


@external
def accept_result(job_id: uint256, spec: JobSpec, slot: uint8):
    """
    @notice The requester accepts a committed result with its claimed GPU-seconds.
    @param job_id The job.
    @param spec Its terms.
    @param slot The slot.
    """
    self._check_spec(job_id, spec)
    assert msg.sender == spec.requester, "market: caller is not the requester"
    index: uint256 = convert(slot, uint256)
    s: Slot = self._slot(job_id, index)
    assert s.status == SlotStatus.COMMITTED, "market: result is not committed"
    s.status = SlotStatus.ACCEPTED
    self._put_slot(job_id, index, s)
    log ResultAccepted(job_id=job_id, slot=slot, gpu_seconds=s.gpu_seconds)


@external
@nonreentrant
def dispute_result(job_id: uint256, spec: JobSpec, slot: uint8):
    """
    @notice Disputes a committed result within the challenge window, putting up
            the dispute bond. Only the requester or a staked verifier may dispute.
            A verifier then rules: a rejection returns the bond and pays the
            challenger the non-requester share of the slash; an acceptance gives
            the bond to the provider; so does no ruling within a second window
            (the slot is then paid on its claim).
    @dev Non-reentrant: pulls the bond in.
    @param job_id The job.
    @param spec Its terms.
    @param slot The slot.
    """
    self._check_spec(job_id, spec)
    index: uint256 = convert(slot, uint256)
    s: Slot = self._slot(job_id, index)
    assert s.status == SlotStatus.COMMITTED, "market: result is not committed"
    assert block.timestamp < self._window_end(s, spec), "market: challenge window closed"
    assert msg.sender == spec.requester or staticcall registry.is_active_verifier(msg.sender), "market: caller may not dispute"
    assert msg.sender != s.provider, "market: provider cannot dispute itself"
    bond: uint256 = self.dispute_bond
    s.status = SlotStatus.DISPUTED
    self._put_slot(job_id, index, s)
    self.slot_disputers[job_id][index] = msg.sender
    self.slot_bonds[job_id][index] = bond
    self.slot_heads[job_id][index] |= HEAD_FLAGGED
    job: Job = self._job(job_id)
    job.escrow += bond
    self._put_job(job_id, job)
    log ResultDisputed(job_id=job_id, slot=slot, disputer=msg.sender, bond=bond)
    if bond > 0:
        assert extcall token.transferFrom(msg.sender, self, bond, default_return_value=True), "market: transfer failed"


@external
def attest(job_id: uint256, spec: JobSpec, slot: uint8, outcome: uint8, verified_gpu_seconds: uint64):
    """
    @notice The verifier court passes on its final ruling on a committed or disputed result:
            accept with the verified GPU-seconds (never above the claim), reject
            (refund and slash at settlement) or void (refund, nobody at fault).
            The court draws who rules, never a party, and hears appeals.
    @param job_id The job.
    @param spec Its terms.
    @param slot The slot.
    @param outcome OUTCOME_ACCEPT, OUTCOME_REJECT or OUTCOME_VOID.
    @param verified_gpu_seconds GPU-seconds the verification supports (accept only).
    """
    self._check_spec(job_id, spec)
    assert msg.sender == self.court, "market: caller is not the court"
    index: uint256 = convert(slot, uint256)
    s: Slot = self._slot(job_id, index)
    assert outcome <= OUTCOME_VOID, "market: unknown outcome"
    window_end: uint256 = self._window_end(s, spec)
    if s.status == SlotStatus.DISPUTED:
        window_end += convert(spec.challenge_window, uint256)
    else:
        assert s.status == SlotStatus.COMMITTED, "market: result is not committed"
    assert block.timestamp < window_end, "market: attestation window closed"
    claimed: uint64 = s.gpu_seconds
    verified: uint64 = 0
    s.status = SlotStatus.VOIDED
    if outcome == OUTCOME_ACCEPT:
        verified = min(verified_gpu_seconds, claimed)
        s.status = SlotStatus.ACCEPTED
        s.gpu_seconds = verified
        if verified < claimed:
            # An over-claim: the claim is kept for the proportional slash at settlement.
            self.slot_bonds[job_id][index] |= convert(claimed, uint256) << 160
            self.slot_heads[job_id][index] |= HEAD_FLAGGED
    elif outcome == OUTCOME_REJECT:
        s.status = SlotStatus.REJECTED
    self._put_slot(job_id, index, s)
    log ResultAttested(
        job_id=job_id,
        slot=slot,
        verifier=msg.sender,
        outcome=outcome,
        claimed_gpu_seconds=claimed,
        verified_gpu_seconds=verified,
    )


# ---------------------------------------------------------------- settlement


@external
@nonreentrant
def settle(job_id: uint256, spec: JobSpec, slot: uint8):
    """
    @notice Settles a slot; anyone may call once the slot can end:
            accepted → the provider is paid verified GPU-seconds x price (less the
            fee), the rest is refunded, and if the verifier cut the claim by more than
            OVER_CLAIM_TOLERANCE_BPS its stake pays collateral x (claim - verified) / claim
            (shared as a slash; a dispute's bond goes back to its challenger); committed and unchallenged past the window
            → paid on its claim; rejected, or no result by the run deadline →
            refunded and the provider slashed; disputed with no ruling by the end of
            the second window → paid on its claim, the bond to the provider; voided →
            refunded, nobody slashed; a no-show → the provider paid NO_SHOW_FEE_BPS of the
            slot's value, the rest refunded, nobody slashed.
    @dev Non-reentrant: credits payments and calls the registry.
    @param job_id The job.
    @param spec Its terms.
    @param slot The slot.
    """
    job: Job = self._load(job_id, spec)
    assert job.status == JobStatus.LEASED, "market: job is not leased"
    index: uint256 = convert(slot, uint256)
    assert index < convert(spec.redundancy, uint256), "market: no such slot"
    s: Slot = self._slot(job_id, index)
    assert not s.status in (SlotStatus.PAID | SlotStatus.SLASHED | SlotStatus.REFUNDED), "market: slot already settled"
    now: uint256 = block.timestamp
    window_end: uint256 = self._window_end(s, spec)
    slot_value: uint256 = self._value(s.price, spec.max_gpu_seconds)
    # What the lease locked, and all a slash on it takes: the slot's value and its base slash.
    collateral: uint256 = slot_value + self._slot_base_slash(job_id, index)

    paid: uint256 = 0
    fee: uint256 = 0
    slashed: uint256 = 0
    refunded: uint256 = slot_value
    final: SlotStatus = SlotStatus.REFUNDED
    # The bond this slot's dispute paid (not the current parameter), and a cut claim.
    packed: uint256 = 0
    if self.slot_heads[job_id][index] & HEAD_FLAGGED != 0:
        packed = self.slot_bonds[job_id][index]
    fees: uint256 = self.fee_word
    treasury: address = convert(fees & MASK_160, address)
    fee_bps: uint256 = (fees >> 160) & 65_535
    bond: uint256 = packed & MASK_160
    claimed: uint256 = packed >> 160
    disputer: address = empty(address)
    if bond > 0:
        disputer = self.slot_disputers[job_id][index]
    # What the provider's stake pays: all of its collateral on a failure, a share of it on an over-claim.
    penalty: uint256 = 0
    no_show: bool = False

    if (
        s.status == SlotStatus.ACCEPTED
        or (s.status == SlotStatus.COMMITTED and now >= window_end)
        or (s.status == SlotStatus.DISPUTED and now >= window_end + convert(spec.challenge_window, uint256))
    ):
        # Pay for the verified (or unchallenged) GPU-seconds, capped by the slot's escrow. A dispute
        # nobody ruled on by the end of the second window is paid on its claim, like a failed one.
        final = SlotStatus.PAID
        paid = min(self._value(s.price, s.gpu_seconds), slot_value)
        fee = paid * fee_bps // BPS
        refunded = slot_value - paid
        self._credit(s.provider, paid - fee)
        self._credit(treasury, fee)
        if claimed > 0:
            # Over-claimed: the stake pays the collateral in proportion to the cut, and a dispute
            # was right (its bond goes back, below). A cut within the tolerance is metering noise.
            cut: uint256 = claimed - convert(s.gpu_seconds, uint256)
            if cut * BPS > claimed * OVER_CLAIM_TOLERANCE_BPS:
                penalty = collateral * cut // claimed
            if penalty == 0:
                self._credit(disputer, bond)
        elif bond > 0:
            # The dispute failed: its bond compensates the provider.
            self._credit(s.provider, bond)
    elif s.status == SlotStatus.REJECTED or (
        s.status == SlotStatus.ASSIGNED and now > convert(job.lease_start, uint256) + convert(spec.run_duration, uint256)
    ):
        final = SlotStatus.SLASHED
        penalty = collateral
    elif s.status == SlotStatus.NO_SHOW:
        # The requester never delivered a runnable bundle: nobody is slashed, and the provider is
        # paid a share of the slot's value for the devices it held ready.
        no_show = True
        paid = slot_value * NO_SHOW_FEE_BPS // BPS
        fee = paid * fee_bps // BPS
        refunded = slot_value - paid
        self._credit(s.provider, paid - fee)
        self._credit(treasury, fee)
    elif s.status == SlotStatus.VOIDED:
        final = SlotStatus.REFUNDED
        if bond > 0:
            self._credit(disputer, bond)
    else:
        raise "market: slot cannot settle yet"

    # Effects: the slot is final and the job's escrow shrinks before any external call.
    s.status = final
    self._put_slot(job_id, index, s)
    job.count -= 1
    job.escrow -= slot_value + bond
    if job.count == 0:
        job.status = JobStatus.CLOSED
    self._put_job(job_id, job)
    self._credit(spec.requester, refunded)

    if penalty > 0:
        # Interactions: take the stake, then share it out.
        slashed = extcall registry.slash(s.provider, penalty)
        to_requester: uint256 = slashed * (fees >> 176) // BPS
        self._credit(spec.requester, to_requester)
        rest: uint256 = slashed - to_requester
        if bond > 0:
            # A successful dispute (a rejection or a cut claim): bond back, and the challenger earns the rest.
            self._credit(disputer, bond + rest)
        else:
            self._credit(treasury, rest)
    # A no-show is the requester's failure, not the provider's.
    extcall registry.release(s.provider, collateral, final == SlotStatus.PAID or no_show)

    log SlotSettled(
        job_id=job_id,
        slot=slot,
        provider=s.provider,
        status=final,
        gpu_seconds=s.gpu_seconds if final == SlotStatus.PAID else 0,
        paid=paid,
        fee=fee,
        refunded=refunded,
        slashed=slashed,
    )
    if job.count == 0:
        log JobClosed(job_id=job_id)


@external
@nonreentrant
def withdraw() -> uint256:
    """
    @notice Withdraws all of the caller's credit.
    @dev Non-reentrant: moves tokens out. The credit is zeroed before the transfer.
    @return The amount withdrawn.
    """
    word: uint256 = self.credit_words[msg.sender]
    amount: uint256 = word & MASK_254
    assert amount > 0, "market: nothing to withdraw"
    # First zero the credit (the word keeps its flags), then send the tokens.
    self.credit_words[msg.sender] = word - amount
    self.total_credits -= amount
    log Withdrawn(account=msg.sender, amount=amount)
    assert extcall token.transfer(msg.sender, amount, default_return_value=True), "market: transfer failed"
    return amount


# ---------------------------------------------------------------- views


@external
@pure
def spec_hash(spec: JobSpec) -> bytes32:
    """
    @notice The hash a job's terms are stored as.
    @param spec The terms.
    @return keccak256 of their ABI encoding.
    """
    return keccak256(abi_encode(spec))


@external
@pure
def escrow_for(spec: JobSpec) -> uint256:
    """
    @notice Tokens a job with these terms locks when posted.
    @param spec The terms.
    @return redundancy x max_price x max_gpu_seconds / 3600.
    """
    return self._escrow_for(spec)


@external
@pure
def bid_commitment(job_id: uint256, provider: address, price: uint256, salt: bytes32) -> bytes32:
    """
    @notice The commitment a sealed ask is made with.
    @param job_id The job.
    @param provider The bidder.
    @param price The ask.
    @param salt A secret random value.
    @return keccak256(abi_encode(job_id, provider, price, salt)).
    """
    return keccak256(abi_encode(job_id, provider, price, salt))


@external
@view
def jobs(job_id: uint256) -> Job:
    """
    @notice A job's state.
    @param job_id The job.
    @return Its spec hash, status, escrow, count and lease start.
    """
    job: Job = self._job(job_id)
    job.spec_hash = self.job_hashes[job_id]
    return job


@external
@view
def credits(account: address) -> uint256:
    """
    @notice Tokens an account can withdraw.
    @param account The account.
    @return Its credit, in token units.
    """
    return self.credit_words[account] & MASK_254


@external
@view
def direct_payout(account: address) -> bool:
    """
    @notice Whether an account is paid at once rather than credited (see `set_direct_payout`).
    @param account The account.
    @return True when paid at once.
    """
    return self.credit_words[account] & CREDIT_DIRECT != 0


@external
@view
def asks(job_id: uint256, rank: uint256) -> uint256:
    """
    @notice A sealed auction's kept ask at `rank` (0 the lowest) while the auction is open.
    @param job_id The job.
    @param rank The rank, 0 to the job's redundancy.
    @return price << 160 | provider; 0 when there is none (or the auction has ended).
    """
    if self.slot_heads[job_id][rank] != 0:
        return 0
    word: uint256 = self.slot_terms[job_id][rank]
    return ((word & MASK_96) << 160) | (word >> 96)


@external
@view
def dispute_bonds(job_id: uint256, slot: uint256) -> uint256:
    """
    @notice The bond a slot's dispute paid (held until the slot settles).
    @param job_id The job.
    @param slot The slot index.
    @return The bond, in token units; 0 if the slot was not disputed.
    """
    return self.slot_bonds[job_id][slot] & MASK_160


@external
@view
def base_slashes(job_id: uint256, slot: uint256) -> uint256:
    """
    @notice The base slash a slot was leased under: its collateral is its value plus this.
    @param job_id The job.
    @param slot The slot index.
    @return The base slash, in token units; 0 for a slot not leased.
    """
    if self.slot_heads[job_id][slot] == 0:
        return 0
    return self._slot_base_slash(job_id, slot)


@external
@view
def over_claims(job_id: uint256, slot: uint256) -> uint64:
    """
    @notice The GPU-seconds a slot claimed when a verifier accepted fewer (0 when none were cut).
    @param job_id The job.
    @param slot The slot index.
    @return The original claim.
    """
    return convert(self.slot_bonds[job_id][slot] >> 160, uint64)


@external
@view
def slots(job_id: uint256, slot: uint256) -> Slot:
    """
    @notice One provider's slot of a job.
    @param job_id The job.
    @param slot The slot index.
    @return Its provider, status, price, result root, GPU-seconds, commit time and disputer.
    """
    if self.slot_heads[job_id][slot] == 0:
        # Not leased (an open sealed auction keeps its asks in the same words).
        return empty(Slot)
    s: Slot = self._slot(job_id, slot)
    s.result_root = self.slot_roots[job_id][slot]
    s.disputer = self.slot_disputers[job_id][slot]
    return s


# ---------------------------------------------------------------- internal


@internal
def _post(spec: JobSpec) -> uint256:
    assert spec.requester == msg.sender, "market: requester is not the caller"
    assert spec.redundancy >= 1 and spec.redundancy <= MAX_REDUNDANCY, "market: bad redundancy"
    assert spec.policy <= POLICY_OPTIMISTIC, "market: unknown policy"
    assert spec.policy != POLICY_REDUNDANT or spec.redundancy >= 2, "market: redundant policy needs redundancy >= 2"
    assert spec.auction <= AUCTION_INSTANT, "market: unknown auction"
    assert spec.device_kind <= 1, "market: unknown device kind"
    assert spec.gpus >= 1, "market: no devices"
    assert spec.max_price > 0 and spec.max_price <= MAX_PRICE, "market: bad max price"
    assert spec.max_gpu_seconds > 0, "market: no GPU-seconds"
    assert convert(spec.bid_deadline, uint256) > block.timestamp, "market: bid deadline passed"
    # Every window is bounded: a provider's collateral and a requester's escrow are locked at most
    # bid window + reveal window + run duration + 2 x challenge window.
    bounds: uint256 = self.bounds_word
    assert convert(spec.bid_deadline, uint256) - block.timestamp <= bounds & MASK_64, "market: bid window above the maximum"
    if spec.auction == AUCTION_SEALED:
        assert spec.reveal_deadline > spec.bid_deadline, "market: reveal deadline before bid deadline"
        assert convert(spec.reveal_deadline - spec.bid_deadline, uint256) <= bounds & MASK_64, "market: reveal window above the maximum"
    assert spec.run_duration > 0, "market: no run time"
    assert convert(spec.run_duration, uint256) <= (bounds >> 64) & MASK_64, "market: run duration above the maximum"
    assert spec.challenge_window > 0, "market: no challenge window"
    assert convert(spec.challenge_window, uint256) <= (bounds >> 128) & MASK_64, "market: challenge window above the maximum"
    escrow: uint256 = self._escrow_for(spec)
    assert escrow > 0, "market: escrow rounds to zero"

    job_id: uint256 = (bounds >> 192) + 1
    self.bounds_word = (bounds & MASK_192) | (job_id << 192)
    self.job_hashes[job_id] = keccak256(abi_encode(spec))
    self._put_job(job_id, Job(spec_hash=empty(bytes32), status=JobStatus.OPEN, escrow=escrow, count=0, lease_start=0))
    log JobPosted(job_id=job_id, requester=msg.sender, spec=spec, escrow=escrow)
    # Effects first, then pull the escrow.
    assert extcall token.transferFrom(msg.sender, self, escrow, default_return_value=True), "market: transfer failed"
    return job_id


@internal
def _start_lease(job_id: uint256, job: Job, spec: JobSpec, refund: uint256, clearing: uint256):
    # Every slot has its provider: the run clock starts and the escrow above the price goes back.
    self._put_job(
        job_id,
        Job(
            spec_hash=empty(bytes32),
            status=JobStatus.LEASED,
            escrow=job.escrow - refund,
            count=spec.redundancy,
            lease_start=convert(block.timestamp, uint64),
        ),
    )
    self._credit(spec.requester, refund)
    log JobLeased(job_id=job_id, clearing_price=clearing, refunded=refund)


@internal
def _release_taken(job_id: uint256, spec: JobSpec, taken: uint8):
    # Slots already taken (instant) or locked (sealed, with too few winners) go back to their
    # providers unharmed, with their collateral.
    for i: uint256 in range(convert(taken, uint256), bound=MAX_SLOTS):
        s: Slot = self._slot(job_id, i)
        s.status = SlotStatus.RELEASED
        self._put_slot(job_id, i, s)
        extcall registry.release(
            s.provider, self._value(s.price, spec.max_gpu_seconds) + self._slot_base_slash(job_id, i), False
        )


@internal
def _assign(job_id: uint256, index: uint256, provider: address, price: uint256):
    # Two words for a fresh slot: its root and disputer stay empty until used.
    # The base slash it is leased under is kept with its terms: the collateral stays what was locked.
    self.slot_heads[job_id][index] = convert(provider, uint256) | (convert(SlotStatus.ASSIGNED, uint256) << 160)
    self.slot_terms[job_id][index] = price | (self.base_slash << 160)


@internal
@view
def _job(job_id: uint256) -> Job:
    # Unpacks a job's state word; the spec hash is left empty (see `_check_spec`).
    word: uint256 = self.job_words[job_id]
    return Job(
        spec_hash=empty(bytes32),
        status=convert((word >> 160) & 65_535, JobStatus),
        escrow=word & MASK_160,
        count=convert((word >> 176) & 255, uint8),
        lease_start=convert((word >> 184) & MASK_64, uint64),
    )


@internal
def _put_job(job_id: uint256, job: Job):
    # An escrow fits in 160 bits: posting locks at most 5 x (2**96 - 1) x (2**64 - 1) / 3600 < 2**152,
    # and each of its at most 5 disputes adds a bond of at most MAX_DISPUTE_BOND = 2**128.
    self.job_words[job_id] = (
        job.escrow
        | (convert(job.status, uint256) << 160)
        | (convert(job.count, uint256) << 176)
        | (convert(job.lease_start, uint256) << 184)
    )


@internal
@view
def _slot(job_id: uint256, index: uint256) -> Slot:
    # Unpacks a slot's head and terms; its root and disputer are left empty (read them apart).
    head: uint256 = self.slot_heads[job_id][index]
    terms: uint256 = self.slot_terms[job_id][index]
    return Slot(
        provider=convert(head & MASK_160, address),
        status=convert((head >> 160) & 65_535, SlotStatus),
        price=terms & MASK_96,
        result_root=empty(bytes32),
        gpu_seconds=convert((terms >> 96) & MASK_64, uint64),
        committed_at=convert((head >> 176) & MASK_64, uint64),
        disputer=empty(address),
    )


@internal
def _put_slot(job_id: uint256, index: uint256, s: Slot):
    self.slot_heads[job_id][index] = (
        convert(s.provider, uint256)
        | (convert(s.status, uint256) << 160)
        | (convert(s.committed_at, uint256) << 176)
        | (self.slot_heads[job_id][index] & HEAD_FLAGGED)
    )
    self.slot_terms[job_id][index] = (
        s.price | (convert(s.gpu_seconds, uint256) << 96) | ((self.slot_terms[job_id][index] >> 160) << 160)
    )


@internal
@view
def _slot_base_slash(job_id: uint256, index: uint256) -> uint256:
    return self.slot_terms[job_id][index] >> 160


@internal
@pure
def _window_end(s: Slot, spec: JobSpec) -> uint256:
    # End of a committed slot's challenge window, summed in uint256 so that it cannot overflow.
    return convert(s.committed_at, uint256) + convert(spec.challenge_window, uint256)


@internal
@view
def _check_spec(job_id: uint256, spec: JobSpec):
    stored: bytes32 = self.job_hashes[job_id]
    assert stored != empty(bytes32), "market: unknown job"
    assert stored == keccak256(abi_encode(spec)), "market: spec does not match job"


@internal
@view
def _load(job_id: uint256, spec: JobSpec) -> Job:
    self._check_spec(job_id, spec)
    return self._job(job_id)


@internal
@view
def _check_eligible(provider: address, spec: JobSpec, slot_value: uint256):
    # Registered, with the minimum stake and free stake for the lease's collateral.
    assert staticcall registry.is_eligible(
        provider, spec.device_kind, spec.gpus, spec.min_memory_mb, slot_value + self.base_slash
    ), "market: provider not eligible"


@internal
def _credit(account: address, amount: uint256):
    if amount == 0:
        return
    word: uint256 = self.credit_words[account]
    if word & CREDIT_DIRECT != 0 and self._send(account, amount):
        # Paid at once, as the account asked (the token's Transfer and the paying call's event record it).
        return
    # No overflow: every credit is backed by tokens, and a token's supply is far below 2**254.
    self.credit_words[account] = (word + amount) | CREDIT_SEEN
    self.total_credits += amount


@internal
def _send(account: address, amount: uint256) -> bool:
    # A direct payment: a transfer that fails (a token that refuses the recipient) is not an error,
    # the payment is then kept as a credit, so that no settlement or refund is blocked by it.
    ok: bool = False
    response: Bytes[32] = b""
    ok, response = raw_call(
        token.address,
        abi_encode(account, amount, method_id=method_id("transfer(address,uint256)")),
        max_outsize=32,
        revert_on_failure=False,
    )
    return ok and (len(response) == 0 or convert(extract32(response, 0), uint256) == 1)


@internal
@pure
def _value(price: uint256, gpu_seconds: uint64) -> uint256:
    return price * convert(gpu_seconds, uint256) // SECONDS_PER_HOUR


@internal
@pure
def _escrow_for(spec: JobSpec) -> uint256:
    return convert(spec.redundancy, uint256) * self._value(spec.max_price, spec.max_gpu_seconds)


@internal
def _set_parameters(
    treasury_: address, fee_bps_: uint256, dispute_bond_: uint256, base_slash_: uint256, slash_requester_bps_: uint256
):
    assert treasury_ != empty(address), "market: treasury is the zero address"
    assert fee_bps_ <= 1_000, "market: fee above 10%"
    assert slash_requester_bps_ <= BPS, "market: share above 100%"
    assert dispute_bond_ <= MAX_DISPUTE_BOND, "market: dispute bond too large"
    assert base_slash_ <= MAX_BASE_SLASH, "market: base slash too large"
    self.fee_word = convert(treasury_, uint256) | (fee_bps_ << 160) | (slash_requester_bps_ << 176)
    self.dispute_bond = dispute_bond_
    self.base_slash = base_slash_
    log ParametersChanged(
        treasury=treasury_,
        fee_bps=fee_bps_,
        dispute_bond=dispute_bond_,
        base_slash=base_slash_,
        slash_requester_bps=slash_requester_bps_,
    )


@internal
def _set_window_bounds(max_bid_window: uint64, max_run_duration: uint64, max_challenge_window: uint64):
    for bound: uint64 in [max_bid_window, max_run_duration, max_challenge_window]:
        assert bound >= 1 and bound <= MAX_WINDOW, "market: window bound out of range"
    self.bounds_word = (
        (self.bounds_word & ~MASK_192)
        | convert(max_bid_window, uint256)
        | (convert(max_run_duration, uint256) << 64)
        | (convert(max_challenge_window, uint256) << 128)
    )
    log WindowBoundsChanged(
        max_bid_window=max_bid_window, max_run_duration=max_run_duration, max_challenge_window=max_challenge_window
    )


@internal
def _take_queued(change: bytes32):
    eta: uint256 = self.queued_changes[change]
    assert eta != 0, "market: change not queued"
    assert block.timestamp >= eta, "market: change still delayed"
    self.queued_changes[change] = 0


@internal
def _permit(amount: uint256, deadline: uint256, v: uint8, r: bytes32, s: bytes32):
    # Anyone may submit a signed permit first and use up its nonce: when the permit fails,
    # the allowance it set (or an earlier one) is used if it suffices, else its reason stands.
    ok: bool = False
    response: Bytes[160] = b""
    ok, response = raw_call(
        token.address,
        abi_encode(
            msg.sender,
            self,
            amount,
            deadline,
            v,
            r,
            s,
            method_id=method_id("permit(address,address,uint256,uint256,uint8,bytes32,bytes32)"),
        ),
        max_outsize=160,
        revert_on_failure=False,
    )
    if not ok and staticcall token.allowance(msg.sender, self) < amount:
        raw_revert(response)
