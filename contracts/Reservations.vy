# pragma version ~=0.4.3
# pragma nonreentrancy off
"""
@title flopex reserved capacity (forward contracts on GPU time)
@custom:contract-name Reservations
@license GNU Affero General Public License v3.0 only
@notice A registered provider offers a future window of its devices (start,
        duration, GPUs, price per GPU-hour). A requester buys it ahead and pays
        `gpus x duration x price / 3600` into escrow; the provider's stake is
        locked in the registry until the reservation settles, so it cannot
        unbond away. Before the window starts the holder may list the
        reservation for resale and another requester buy it (the seller is
        credited). During the window the holder's jobs run on the reserved
        devices without an auction; the provider records the GPU-seconds it
        served with a result root per job. The holder may report that it was
        not served (with a bond), and anyone may bring the window to the
        verifier court (`VerifierCourt.vy`), whose final ruling alone is taken. After the window and a challenge period
        anyone settles: normally the whole escrow, used and unused time, goes
        to the provider less the protocol fee; on an attested failure the
        holder is refunded and the provider slashed. Every payment is a credit
        withdrawn by its owner.
@dev Invariant: `token.balanceOf(self) == sum(escrow_of(id)) + total_credits`, where
     `escrow_of` counts a bought, unsettled reservation's price and its dispute bond.
     Needs the registry's authorization (`set_authorized`) to lock, release and slash.
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable

initializes: ownable

exports: (ownable.owner, ownable.transfer_ownership)


interface IProviderRegistry:
    def is_eligible(provider: address, device_kind: uint8, gpus: uint16, min_memory_mb: uint32, collateral: uint256) -> bool: view
    def is_active_verifier(account: address) -> bool: view
    def lock(provider: address, amount: uint256) -> bool: nonpayable
    def release(provider: address, amount: uint256, completed: bool): nonpayable
    def slash(provider: address, amount: uint256) -> uint256: nonpayable


# @dev Seconds in an hour: prices are per GPU-hour, usage is in GPU-seconds.
SECONDS_PER_HOUR: constant(uint256) = 3_600
# @dev Basis points in one.
BPS: constant(uint256) = 10_000
# @dev Prices are packed in 96 bits, as the market's asks are.
MAX_PRICE: public(constant(uint256)) = 2**96 - 1
# @dev Longest window one offer may reserve (a year).
MAX_DURATION: public(constant(uint256)) = 365 * 86_400
# @dev Registry device kinds; a reservation may be for either.
DEVICE_CPU: constant(uint8) = 0
DEVICE_CUDA: constant(uint8) = 1
# @dev Masks of the packed storage words.
MASK_16: constant(uint256) = 2**16 - 1
MASK_32: constant(uint256) = 2**32 - 1
MASK_64: constant(uint256) = 2**64 - 1
MASK_96: constant(uint256) = 2**96 - 1
MASK_160: constant(uint256) = 2**160 - 1


flag Status:
    OFFERED  # published by the provider, nobody bought it yet
    CANCELLED  # withdrawn before anyone bought it (terminal, nothing held)
    RESERVED  # bought: the escrow is held and the provider's stake locked
    DISPUTED  # the holder reported it was not served and put up a bond; awaits a verifier
    SERVED  # a verifier ruled the dispute against the holder; awaits settlement
    FAILED  # a verifier attested the provider did not serve; awaits settlement
    PAID  # settled: the provider was paid the escrow less the fee (terminal)
    SLASHED  # settled: the holder was refunded and the provider slashed (terminal)
    REFUNDED  # no longer reached: a dispute nobody rules on is paid (kept for the flag's values)


struct Reservation:
    provider: address  # whose devices are reserved
    status: Status  # where it stands
    start: uint64  # when the window opens
    gpus: uint16  # devices reserved
    price: uint256  # token units per GPU-hour
    duration: uint64  # seconds the window lasts
    used_gpu_seconds: uint64  # GPU-seconds the provider recorded as served
    usage_records: uint32  # how many usage records (jobs) it recorded
    holder: address  # who holds it now (empty until bought)
    resale_price: uint256  # the holder's asking price for resale; 0 when not listed
    usage_digest: bytes32  # hash chain of the usage records: keccak256(prev, root, gpu_seconds)
    escrow: uint256  # tokens held for it, dispute bond included


# @dev The token reservations are paid in.
token: public(immutable(IERC20))
# @dev The provider registry: eligibility, verifiers, stake locks and slashing.
registry: public(immutable(IProviderRegistry))
# @dev Seconds after a window ends in which usage may still be recorded and the holder or a
# verifier may report a failure; a dispute gets a second such period for its ruling.
challenge_period: public(immutable(uint256))
# @dev Who receives the protocol fee and the rest of slashes.
treasury: public(address)
# @dev Protocol fee on each settled payment, in basis points.
fee_bps: public(uint256)
# @dev Bond the holder puts up to report that it was not served.
dispute_bond: public(uint256)
# @dev Slashed on top of the reservation's price when a provider fails.
base_slash: public(uint256)
# @dev Share of a slash credited to the holder, in basis points.
slash_holder_bps: public(uint256)
# @dev The verifier court: the only account whose rulings `attest_failure` and `attest_served` take.
court: public(address)

# @dev Number of offers made; ids start at 1.
offer_count: public(uint256)
# Reservations are packed: an offer costs two new words, a purchase one more.
# @dev Each reservation's head: provider | status << 160 | start << 176 | gpus << 240.
heads: HashMap[uint256, uint256]
# @dev Each reservation's terms: price | duration << 96 | used GPU-seconds << 160 | records << 224.
terms: HashMap[uint256, uint256]
# @dev Each reservation's holder: holder | resale price << 160.
holders: HashMap[uint256, uint256]
# @dev Hash chain of each reservation's usage records.
usage_digests: HashMap[uint256, bytes32]
# @dev Bond each disputed reservation holds, as paid at the dispute.
dispute_bonds: public(HashMap[uint256, uint256])
# @dev Stake each bought reservation locked in the registry: its price and the base slash at purchase.
collaterals: public(HashMap[uint256, uint256])
# @dev Tokens each account can withdraw.
credits: public(HashMap[address, uint256])
# @dev Sum of all credits, for the solvency invariant.
total_credits: public(uint256)


event OfferPosted:
    reservation_id: indexed(uint256)
    provider: indexed(address)
    start: uint64
    duration: uint64
    gpus: uint16
    price: uint256
    escrow: uint256


event OfferCancelled:
    reservation_id: indexed(uint256)
    provider: indexed(address)


event ReservationBought:
    reservation_id: indexed(uint256)
    buyer: indexed(address)
    provider: indexed(address)
    escrow: uint256


event ResaleListed:
    reservation_id: indexed(uint256)
    holder: indexed(address)
    price: uint256


event ResaleCancelled:
    reservation_id: indexed(uint256)
    holder: indexed(address)


event ReservationResold:
    reservation_id: indexed(uint256)
    seller: indexed(address)
    buyer: indexed(address)
    price: uint256


event UsageRecorded:
    reservation_id: indexed(uint256)
    provider: indexed(address)
    gpu_seconds: uint64
    used_gpu_seconds: uint64
    result_root: bytes32
    usage_digest: bytes32


event NotServedReported:
    reservation_id: indexed(uint256)
    holder: indexed(address)
    bond: uint256


event FailureAttested:
    reservation_id: indexed(uint256)
    verifier: indexed(address)


event ServiceAttested:
    reservation_id: indexed(uint256)
    verifier: indexed(address)


event ReservationSettled:
    reservation_id: indexed(uint256)
    provider: indexed(address)
    holder: indexed(address)
    status: Status
    used_gpu_seconds: uint64
    paid: uint256
    fee: uint256
    refunded: uint256
    slashed: uint256


event Withdrawn:
    account: indexed(address)
    amount: uint256


event ParametersChanged:
    treasury: address
    fee_bps: uint256
    dispute_bond: uint256
    base_slash: uint256
    slash_holder_bps: uint256


@deploy
def __init__(
    token_: IERC20,
    registry_: IProviderRegistry,
    challenge_period_: uint256,
    treasury_: address,
    fee_bps_: uint256,
    dispute_bond_: uint256,
    base_slash_: uint256,
    slash_holder_bps_: uint256,
):
    """
    @notice Deploys the reservations contract; the deployer owns it. The
            registry's owner must then authorize it (`set_authorized`).
    @param token_ The token reservations are paid in.
    @param registry_ The provider registry.
    @param challenge_period_ Seconds after a window for usage records and failure reports.
    @param treasury_ Who receives fees and the rest of slashes.
    @param fee_bps_ Protocol fee in basis points.
    @param dispute_bond_ Bond to report a reservation not served.
    @param base_slash_ Slashed on top of a failed reservation's price.
    @param slash_holder_bps_ Share of a slash that goes to the holder.
    """
    assert challenge_period_ > 0 and challenge_period_ <= MAX_DURATION, "reservations: bad challenge period"
    ownable.__init__()
    token = token_
    registry = registry_
    challenge_period = challenge_period_
    self._set_parameters(treasury_, fee_bps_, dispute_bond_, base_slash_, slash_holder_bps_)


@external
def set_court(court_: address):
    """
    @notice Names the verifier court, whose rulings alone `attest_failure` and `attest_served`
            take; it can be set only once, before the first offer.
    @param court_ The court's address.
    """
    ownable._check_owner()
    assert self.court == empty(address), "reservations: court already set"
    assert self.offer_count == 0, "reservations: offers already made"
    assert court_ != empty(address), "reservations: court is the zero address"
    self.court = court_


@external
def set_parameters(
    treasury_: address, fee_bps_: uint256, dispute_bond_: uint256, base_slash_: uint256, slash_holder_bps_: uint256
):
    """
    @notice Changes the treasury, fee, dispute bond and slashing terms; they
            apply to settlements and disputes from now on.
    @param treasury_ Who receives fees and the rest of slashes.
    @param fee_bps_ Protocol fee in basis points.
    @param dispute_bond_ Bond to report a reservation not served.
    @param base_slash_ Slashed on top of a failed reservation's price.
    @param slash_holder_bps_ Share of a slash that goes to the holder.
    """
    ownable._check_owner()
    self._set_parameters(treasury_, fee_bps_, dispute_bond_, base_slash_, slash_holder_bps_)


# ---------------------------------------------------------------- provider: offers


@external
def offer(start: uint64, duration: uint64, gpus: uint16, price: uint256) -> uint256:
    """
    @notice Offers `gpus` of the caller's devices for the window
            [start, start + duration) at `price` per GPU-hour. The caller must
            be a registered, staked provider with at least `gpus` devices.
    @param start When the window opens; must be in the future.
    @param duration Seconds the window lasts, at most MAX_DURATION.
    @param gpus Devices reserved.
    @param price Token units per GPU-hour.
    @return The new reservation's id.
    """
    assert convert(start, uint256) > block.timestamp, "reservations: start not in the future"
    assert duration > 0 and convert(duration, uint256) <= MAX_DURATION, "reservations: bad duration"
    assert gpus > 0, "reservations: no devices"
    assert price > 0 and price <= MAX_PRICE, "reservations: bad price"
    self._check_eligible(msg.sender, gpus, 0)
    escrow: uint256 = self._price_of(gpus, duration, price)
    assert escrow > 0, "reservations: escrow rounds to zero"
    reservation_id: uint256 = self.offer_count + 1
    self.offer_count = reservation_id
    self.heads[reservation_id] = self._head(msg.sender, Status.OFFERED, start, gpus)
    self.terms[reservation_id] = price | (convert(duration, uint256) << 96)
    log OfferPosted(
        reservation_id=reservation_id,
        provider=msg.sender,
        start=start,
        duration=duration,
        gpus=gpus,
        price=price,
        escrow=escrow,
    )
    return reservation_id


@external
def cancel_offer(reservation_id: uint256):
    """
    @notice Withdraws an offer nobody bought. The provider may do so at any
            time; once its window has started anyone may, to close it.
    @param reservation_id The offer.
    """
    r: Reservation = self._load(reservation_id)
    assert r.status == Status.OFFERED, "reservations: not offered"
    assert (
        msg.sender == r.provider or block.timestamp >= convert(r.start, uint256)
    ), "reservations: caller is not the provider"
    self._put_status(reservation_id, r, Status.CANCELLED)
    log OfferCancelled(reservation_id=reservation_id, provider=r.provider)


# ---------------------------------------------------------------- requester: buy and resell


@external
@nonreentrant
def buy(reservation_id: uint256):
    """
    @notice Buys an offer before its window starts, paying its price into
            escrow (approve this contract first); the provider's stake is
            locked until the reservation settles.
    @dev Non-reentrant: pulls tokens in and calls the registry.
    @param reservation_id The offer.
    """
    self._buy(reservation_id)


@external
@nonreentrant
def buy_with_permit(reservation_id: uint256, permit_deadline: uint256, v: uint8, r: bytes32, s: bytes32):
    """
    @notice Buys an offer with an EIP-2612 permit instead of a prior approval.
    @dev Non-reentrant: pulls tokens in and calls the registry.
    @param reservation_id The offer.
    @param permit_deadline The permit's deadline.
    @param v The permit signature's v.
    @param r The permit signature's r.
    @param s The permit signature's s.
    """
    self._permit(self._escrow_value(self._load(reservation_id)), permit_deadline, v, r, s)
    self._buy(reservation_id)


@external
def list_for_resale(reservation_id: uint256, price: uint256):
    """
    @notice Lists the caller's reservation for resale at `price` (a new
            listing replaces the old one); only before the window starts.
    @param reservation_id The reservation.
    @param price Token units the buyer pays the holder.
    """
    r: Reservation = self._load(reservation_id)
    self._check_resellable(r)
    assert msg.sender == r.holder, "reservations: caller is not the holder"
    assert price > 0 and price <= MAX_PRICE, "reservations: bad price"
    self.holders[reservation_id] = convert(r.holder, uint256) | (price << 160)
    log ResaleListed(reservation_id=reservation_id, holder=r.holder, price=price)


@external
def cancel_resale(reservation_id: uint256):
    """
    @notice Takes the caller's reservation off the resale market.
    @param reservation_id The reservation.
    """
    r: Reservation = self._load(reservation_id)
    assert msg.sender == r.holder, "reservations: caller is not the holder"
    assert r.resale_price > 0, "reservations: not listed"
    self.holders[reservation_id] = convert(r.holder, uint256)
    log ResaleCancelled(reservation_id=reservation_id, holder=r.holder)


@external
@nonreentrant
def buy_resale(reservation_id: uint256, max_price: uint256):
    """
    @notice Buys a listed reservation before its window starts: the caller
            pays the listing price (approve first), the seller is credited and
            the caller becomes the holder. `max_price` guards against a
            listing raised in the meantime.
    @dev Non-reentrant: pulls tokens in.
    @param reservation_id The reservation.
    @param max_price The most the caller will pay.
    """
    r: Reservation = self._load(reservation_id)
    self._check_resellable(r)
    assert r.resale_price > 0, "reservations: not listed"
    assert r.resale_price <= max_price, "reservations: resale price above max"
    assert msg.sender != r.holder, "reservations: holder cannot buy its own listing"
    assert msg.sender != r.provider, "reservations: provider cannot buy its own offer"
    price: uint256 = r.resale_price
    # Effects: the caller holds it, unlisted, and the seller is credited; then pull the price.
    self.holders[reservation_id] = convert(msg.sender, uint256)
    self._credit(r.holder, price)
    log ReservationResold(reservation_id=reservation_id, seller=r.holder, buyer=msg.sender, price=price)
    assert extcall token.transferFrom(msg.sender, self, price, default_return_value=True), "reservations: transfer failed"


# ---------------------------------------------------------------- during the window


@external
def record_usage(reservation_id: uint256, gpu_seconds: uint64, result_root: bytes32):
    """
    @notice The provider records GPU-seconds it served the holder with the
            result root of that job, from the window's start until the end of
            the challenge period. The total can never exceed the reserved
            devices' time elapsed in the window.
    @param reservation_id The reservation.
    @param gpu_seconds GPU-seconds served by this job.
    @param result_root Merkle root of the job's outputs.
    """
    r: Reservation = self._load(reservation_id)
    assert msg.sender == r.provider, "reservations: caller is not the provider"
    assert r.status in (Status.RESERVED | Status.DISPUTED | Status.SERVED), "reservations: not reserved"
    start: uint256 = convert(r.start, uint256)
    end: uint256 = start + convert(r.duration, uint256)
    assert block.timestamp >= start, "reservations: window not started"
    assert block.timestamp < end + challenge_period, "reservations: usage window closed"
    assert gpu_seconds > 0, "reservations: no GPU-seconds"
    used: uint256 = convert(r.used_gpu_seconds, uint256) + convert(gpu_seconds, uint256)
    held: uint256 = (min(block.timestamp, end) - start) * convert(r.gpus, uint256)
    assert used <= held, "reservations: usage above device time held"
    digest: bytes32 = keccak256(abi_encode(self.usage_digests[reservation_id], result_root, gpu_seconds))
    self.usage_digests[reservation_id] = digest
    # `used` fits in 64 bits: it is at most MAX_DURATION x 2**16 device-seconds.
    self.terms[reservation_id] = (
        r.price
        | (convert(r.duration, uint256) << 96)
        | (used << 160)
        | ((convert(r.usage_records, uint256) + 1) << 224)
    )
    log UsageRecorded(
        reservation_id=reservation_id,
        provider=msg.sender,
        gpu_seconds=gpu_seconds,
        used_gpu_seconds=convert(used, uint64),
        result_root=result_root,
        usage_digest=digest,
    )


@external
@nonreentrant
def report_not_served(reservation_id: uint256):
    """
    @notice The holder reports that the provider is not serving its jobs,
            while the window is open (a report after it could not be checked:
            an idle window is not a failure), putting up the dispute bond
            (approve first). A staked verifier then rules: failure → refund,
            slash, bond back and the rest of the slash to the holder; served →
            the bond goes to the provider; no ruling by the end of the second
            challenge period → paid as served, the bond to the provider.
    @dev Non-reentrant: pulls the bond in.
    @param reservation_id The reservation.
    """
    r: Reservation = self._load(reservation_id)
    assert msg.sender == r.holder, "reservations: caller is not the holder"
    assert r.status != Status.DISPUTED and r.status != Status.SERVED, "reservations: already disputed"
    assert r.status == Status.RESERVED, "reservations: not reserved"
    end: uint256 = self._window_end(r)
    assert block.timestamp >= convert(r.start, uint256), "reservations: window not started"
    assert block.timestamp < end, "reservations: window over"
    bond: uint256 = self.dispute_bond
    self._put_status(reservation_id, r, Status.DISPUTED)
    self.dispute_bonds[reservation_id] = bond
    log NotServedReported(reservation_id=reservation_id, holder=msg.sender, bond=bond)
    if bond > 0:
        assert extcall token.transferFrom(msg.sender, self, bond, default_return_value=True), "reservations: transfer failed"


@external
def attest_failure(reservation_id: uint256):
    """
    @notice The verifier court rules that the provider did not serve the
            reservation: at settlement the holder is refunded and the provider
            slashed. Possible from the window's start until the end of the
            challenge period (the second one when disputed). The court draws
            who rules, never the provider or the holder.
    @param reservation_id The reservation.
    """
    r: Reservation = self._check_attestable(reservation_id)
    assert r.status in (Status.RESERVED | Status.DISPUTED | Status.SERVED), "reservations: not reserved"
    self._check_attestation_window(r)
    self._put_status(reservation_id, r, Status.FAILED)
    log FailureAttested(reservation_id=reservation_id, verifier=msg.sender)


@external
def attest_served(reservation_id: uint256):
    """
    @notice The verifier court rules a holder's report against it: the
            provider served. The reservation then settles normally and the
            bond goes to the provider. A later failure may still be attested.
    @param reservation_id The disputed reservation.
    """
    r: Reservation = self._check_attestable(reservation_id)
    assert r.status == Status.DISPUTED, "reservations: not disputed"
    self._check_attestation_window(r)
    self._put_status(reservation_id, r, Status.SERVED)
    log ServiceAttested(reservation_id=reservation_id, verifier=msg.sender)


# ---------------------------------------------------------------- settlement


@external
@nonreentrant
def settle(reservation_id: uint256):
    """
    @notice Settles a reservation; anyone may call once it can end:
            failure attested → the holder is refunded and the provider slashed
            (price + base_slash; the holder's share, and with a dispute its bond
            and the rest, to the holder; otherwise the rest to the treasury);
            reserved (or served by ruling) past the window and the challenge
            period → the provider is paid the whole price, used and unused
            time, less the fee (plus the bond of a dispute ruled against the
            holder, or of a dispute nobody ruled on by the end of the second period).
    @dev Non-reentrant: credits payments and calls the registry.
    @param reservation_id The reservation.
    """
    r: Reservation = self._load(reservation_id)
    assert not r.status in (Status.PAID | Status.SLASHED | Status.REFUNDED), "reservations: already settled"
    assert r.status in (Status.RESERVED | Status.DISPUTED | Status.SERVED | Status.FAILED), "reservations: not reserved"
    open_until: uint256 = self._window_end(r) + challenge_period
    value: uint256 = self._escrow_value(r)
    # The bond this reservation's dispute paid, not the current parameter.
    bond: uint256 = self.dispute_bonds[reservation_id]
    # What the purchase locked, and all a slash takes.
    collateral: uint256 = self.collaterals[reservation_id]

    paid: uint256 = 0
    fee: uint256 = 0
    refunded: uint256 = 0
    slashed: uint256 = 0
    final: Status = empty(Status)
    if r.status == Status.FAILED:
        final = Status.SLASHED
        refunded = value
    elif (r.status in (Status.RESERVED | Status.SERVED) and block.timestamp >= open_until) or (
        r.status == Status.DISPUTED and block.timestamp >= open_until + challenge_period
    ):
        # Served, unchallenged, or a report nobody ruled on: the report failed, the provider is paid.
        final = Status.PAID
        paid = value
        fee = paid * self.fee_bps // BPS
    else:
        raise "reservations: cannot settle yet"

    # Effects: the reservation is final and its escrow credited before any external call.
    self._put_status(reservation_id, r, final)
    if final == Status.PAID:
        self._credit(r.provider, paid - fee + bond)
        self._credit(self.treasury, fee)
    else:
        self._credit(r.holder, refunded)
        # Interactions: take the stake, then share it out.
        slashed = extcall registry.slash(r.provider, collateral)
        if bond > 0:
            # A successful report: the bond back, and as the challenger the holder earns
            # the rest of the slash on top of its share: all of it.
            self._credit(r.holder, slashed + bond)
        else:
            to_holder: uint256 = slashed * self.slash_holder_bps // BPS
            self._credit(r.holder, to_holder)
            self._credit(self.treasury, slashed - to_holder)
    extcall registry.release(r.provider, collateral, final == Status.PAID)
    log ReservationSettled(
        reservation_id=reservation_id,
        provider=r.provider,
        holder=r.holder,
        status=final,
        used_gpu_seconds=r.used_gpu_seconds,
        paid=paid,
        fee=fee,
        refunded=refunded,
        slashed=slashed,
    )


@external
@nonreentrant
def withdraw() -> uint256:
    """
    @notice Withdraws all of the caller's credit.
    @dev Non-reentrant: moves tokens out. The credit is zeroed before the transfer.
    @return The amount withdrawn.
    """
    amount: uint256 = self.credits[msg.sender]
    assert amount > 0, "reservations: nothing to withdraw"
    # First zero the credit, then send the tokens.
    self.credits[msg.sender] = 0
    self.total_credits -= amount
    log Withdrawn(account=msg.sender, amount=amount)
    assert extcall token.transfer(msg.sender, amount, default_return_value=True), "reservations: transfer failed"
    return amount


# ---------------------------------------------------------------- views


@external
@view
def reservations(reservation_id: uint256) -> Reservation:
    """
    @notice A reservation's terms and state.
    @param reservation_id The reservation.
    @return Provider, status, window, devices, price, usage, holder, resale price, digest and escrow.
    """
    r: Reservation = self._load(reservation_id)
    r.usage_digest = self.usage_digests[reservation_id]
    r.escrow = self._held(reservation_id, r)
    return r


@external
@view
def escrow_of(reservation_id: uint256) -> uint256:
    """
    @notice Tokens this contract holds for a reservation: its price while
            bought and unsettled, plus an open dispute's bond.
    @param reservation_id The reservation.
    @return Token units held.
    """
    return self._held(reservation_id, self._load(reservation_id))


@external
@pure
def price_of(gpus: uint16, duration: uint64, price: uint256) -> uint256:
    """
    @notice What a window of these terms costs.
    @param gpus Devices.
    @param duration Seconds.
    @param price Token units per GPU-hour.
    @return gpus x duration x price / 3600.
    """
    return self._price_of(gpus, duration, price)


# ---------------------------------------------------------------- internal


@internal
def _buy(reservation_id: uint256):
    r: Reservation = self._load(reservation_id)
    assert r.status == Status.OFFERED, "reservations: not offered"
    assert block.timestamp < convert(r.start, uint256), "reservations: window already started"
    assert msg.sender != r.provider, "reservations: provider cannot buy its own offer"
    # Still registered and staked: the stake about to be locked must back the window.
    escrow: uint256 = self._escrow_value(r)
    collateral: uint256 = escrow + self.base_slash
    self._check_eligible(r.provider, r.gpus, collateral)
    self.collaterals[reservation_id] = collateral
    self._put_status(reservation_id, r, Status.RESERVED)
    self.holders[reservation_id] = convert(msg.sender, uint256)
    log ReservationBought(reservation_id=reservation_id, buyer=msg.sender, provider=r.provider, escrow=escrow)
    # Interactions: lock the provider's stake, then pull the escrow.
    assert extcall registry.lock(r.provider, collateral), "reservations: provider not eligible"
    assert extcall token.transferFrom(msg.sender, self, escrow, default_return_value=True), "reservations: transfer failed"


@internal
@view
def _check_eligible(provider: address, gpus: uint16, collateral: uint256):
    # A reservation may be of either device kind: the provider's registered offer says which.
    assert staticcall registry.is_eligible(provider, DEVICE_CUDA, gpus, 0, collateral) or staticcall registry.is_eligible(
        provider, DEVICE_CPU, gpus, 0, collateral
    ), "reservations: provider not eligible"


@internal
@view
def _check_resellable(r: Reservation):
    assert r.status == Status.RESERVED, "reservations: not reserved"
    assert block.timestamp < convert(r.start, uint256), "reservations: window already started"


@internal
@view
def _check_attestable(reservation_id: uint256) -> Reservation:
    assert msg.sender == self.court, "reservations: caller is not the court"
    return self._load(reservation_id)


@internal
@view
def _check_attestation_window(r: Reservation):
    assert block.timestamp >= convert(r.start, uint256), "reservations: window not started"
    until: uint256 = self._window_end(r) + challenge_period
    if r.status == Status.DISPUTED:
        until += challenge_period
    assert block.timestamp < until, "reservations: attestation window closed"


@internal
@view
def _load(reservation_id: uint256) -> Reservation:
    # Unpacks the three words; the digest and escrow are left empty (see `reservations`).
    head: uint256 = self.heads[reservation_id]
    assert head != 0, "reservations: unknown reservation"
    t: uint256 = self.terms[reservation_id]
    h: uint256 = self.holders[reservation_id]
    return Reservation(
        provider=convert(head & MASK_160, address),
        status=convert((head >> 160) & MASK_16, Status),
        start=convert((head >> 176) & MASK_64, uint64),
        gpus=convert(head >> 240, uint16),
        price=t & MASK_96,
        duration=convert((t >> 96) & MASK_64, uint64),
        used_gpu_seconds=convert((t >> 160) & MASK_64, uint64),
        usage_records=convert(t >> 224, uint32),
        holder=convert(h & MASK_160, address),
        resale_price=h >> 160,
        usage_digest=empty(bytes32),
        escrow=0,
    )


@internal
@pure
def _head(provider: address, status: Status, start: uint64, gpus: uint16) -> uint256:
    return (
        convert(provider, uint256)
        | (convert(status, uint256) << 160)
        | (convert(start, uint256) << 176)
        | (convert(gpus, uint256) << 240)
    )


@internal
def _put_status(reservation_id: uint256, r: Reservation, status: Status):
    self.heads[reservation_id] = self._head(r.provider, status, r.start, r.gpus)


@internal
@view
def _held(reservation_id: uint256, r: Reservation) -> uint256:
    # Bought and not yet settled: the price, and the bond of a dispute if there was one.
    if r.status in (Status.RESERVED | Status.DISPUTED | Status.SERVED | Status.FAILED):
        return self._escrow_value(r) + self.dispute_bonds[reservation_id]
    return 0


@internal
@pure
def _window_end(r: Reservation) -> uint256:
    # Summed in uint256 so that it cannot overflow.
    return convert(r.start, uint256) + convert(r.duration, uint256)


@internal
@pure
def _escrow_value(r: Reservation) -> uint256:
    return self._price_of(r.gpus, r.duration, r.price)


@internal
@pure
def _price_of(gpus: uint16, duration: uint64, price: uint256) -> uint256:
    return convert(gpus, uint256) * convert(duration, uint256) * price // SECONDS_PER_HOUR


@internal
def _credit(account: address, amount: uint256):
    if amount == 0:
        return
    self.credits[account] += amount
    self.total_credits += amount


@internal
def _set_parameters(
    treasury_: address, fee_bps_: uint256, dispute_bond_: uint256, base_slash_: uint256, slash_holder_bps_: uint256
):
    assert treasury_ != empty(address), "reservations: treasury is the zero address"
    assert fee_bps_ <= 1_000, "reservations: fee above 10%"
    assert slash_holder_bps_ <= BPS, "reservations: share above 100%"
    self.treasury = treasury_
    self.fee_bps = fee_bps_
    self.dispute_bond = dispute_bond_
    self.base_slash = base_slash_
    self.slash_holder_bps = slash_holder_bps_
    log ParametersChanged(
        treasury=treasury_,
        fee_bps=fee_bps_,
        dispute_bond=dispute_bond_,
        base_slash=base_slash_,
        slash_holder_bps=slash_holder_bps_,
    )


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
