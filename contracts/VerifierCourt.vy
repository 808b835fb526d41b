# pragma version ~=0.4.3
# pragma nonreentrancy off
"""
@title flopex verifier court
@custom:contract-name VerifierCourt
@license GNU Affero General Public License v3.0 only
@notice Rules on job slots (a policy check or a dispute) and on reservations
        reported not served. For each case a panel is drawn by stake-weighted
        lot among the verifiers that joined the court, from `block.prevrandao`
        of a draw transaction that can only run `draw_delay` blocks after the
        case opened (so after the result was committed); the case's parties
        (requester, provider, disputer, a pool's operator and member; a
        reservation's provider and holder) are never drawn. Only the drawn
        verifiers may rule; a drawn verifier that does not rule in time is
        fined `no_show_fine` and its seat drawn again. A round's majority is
        its ruling; within `appeal_period` anyone may appeal it with a bond of
        `appeal_bond` per seat of the next panel (1, then 3, then 7 verifiers,
        no verifier twice). The last round's ruling is final and is passed to
        the market (`attest`) or the reservations contract (`attest_failure`,
        `attest_served`), which take rulings from this court only. Verifiers
        whose vote differs from the final ruling are slashed `vote_stake`
        each; the slashes, the fines and the bonds of failed appeals are
        shared by the right appellants (half) and the verifiers who voted
        with the final ruling (the rest). Every payment is a credit.
@dev Stakes stay in the registry, which lets this court slash them (`set_authorized`).
     Invariant: `token.balanceOf(self) == total_credits + total_held`, where
     `total_held` is the sum of the bonds and fines open cases hold.
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable

initializes: ownable

exports: (ownable.owner, ownable.transfer_ownership)


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


struct ReservationView:
    provider: address
    status: uint256
    start: uint64
    gpus: uint16
    price: uint256
    duration: uint64
    used_gpu_seconds: uint64
    usage_records: uint32
    holder: address
    resale_price: uint256
    usage_digest: bytes32
    escrow: uint256


interface IRegistry:
    def is_active_verifier(account: address) -> bool: view
    def free_stake(account: address) -> uint256: view
    def slash(provider: address, amount: uint256) -> uint256: nonpayable


interface IMarket:
    def jobs(job_id: uint256) -> MarketJob: view
    def slots(job_id: uint256, slot: uint256) -> MarketSlot: view


interface IReservations:
    def reservations(reservation_id: uint256) -> ReservationView: view
    def challenge_period() -> uint256: view


# @dev What a case rules on.
KIND_SLOT: public(constant(uint8)) = 0
KIND_RESERVATION: public(constant(uint8)) = 1

# @dev Where a case stands.
STATE_DRAWING: public(constant(uint8)) = 1  # waiting for its panel's draw
STATE_VOTING: public(constant(uint8)) = 2  # the drawn panel rules
STATE_APPEALABLE: public(constant(uint8)) = 3  # ruled; may be appealed until the appeal deadline
STATE_CLOSED: public(constant(uint8)) = 4  # final: passed on, verifiers slashed and paid

# @dev Outcomes, as the market numbers them; NO_RULING when nobody ruled.
OUTCOME_ACCEPT: public(constant(uint8)) = 0
OUTCOME_REJECT: public(constant(uint8)) = 1
OUTCOME_VOID: public(constant(uint8)) = 2
NO_RULING: public(constant(uint8)) = 3

# @dev Rounds a case may have (panels of 1, 3 and 7 verifiers) and the seats of all of them.
MAX_ROUNDS: public(constant(uint8)) = 3
MAX_PANEL: constant(uint256) = 7
MAX_SEATS: constant(uint256) = 11
# @dev Verifiers that may join the court at once.
MAX_VERIFIERS: public(constant(uint256)) = 64
# @dev Slots a job has at most (JobMarket's MAX_REDUNDANCY), and the parties of a case at most.
MAX_JOB_SLOTS: constant(uint256) = 5
MAX_PARTIES: constant(uint256) = 9
# @dev Longest period the owner may set: 30 days.
MAX_PERIOD: constant(uint256) = 2_592_000
# @dev Seconds between queueing an owner's change and making it: two days' notice, as the market's.
CHANGE_DELAY: public(constant(uint256)) = 172_800

# @dev Market slot states (JobMarket's SlotStatus flag values) the court rules on.
SLOT_COMMITTED: constant(uint256) = 2
SLOT_DISPUTED: constant(uint256) = 4
# @dev Reservation states (Reservations' Status flag values).
RES_RESERVED: constant(uint256) = 4
RES_DISPUTED: constant(uint256) = 8
RES_SERVED: constant(uint256) = 16
# @dev Policy of a job that asks for no check: only a dispute brings it to court.
POLICY_NONE: constant(uint8) = 0


struct Case:
    kind: uint8  # KIND_*
    state: uint8  # STATE_*
    round: uint8  # the round under way (0, 1, 2)
    seats: uint8  # seats of this round held by a drawn verifier
    cast: uint8  # votes cast in this round
    ruling: uint8  # the latest round's ruling (OUTCOME_* or NO_RULING)
    verified: uint64  # GPU-seconds the ruling accepts (the median of its accepting votes)
    target: uint256  # job id or reservation id
    slot: uint8  # the job's slot
    draw_block: uint256  # first block the next draw may run in
    ruling_deadline: uint256  # end of this round's ruling window
    appeal_deadline: uint256  # end of the appeal window after a ruling
    held: uint256  # appeal bonds and no-show fines the case holds


# @dev The token stakes, bonds and rewards are in.
token: public(immutable(IERC20))
# @dev The registry: verifier stakes; it lets this court slash them.
registry: public(immutable(IRegistry))
# @dev The job market the court rules for.
market: public(immutable(address))
# @dev The reservations contract the court rules for (empty when there is none).
reservations: public(immutable(address))

# @dev Who receives what nobody else may claim (a case no verifier ruled on, rounding dust).
treasury: public(address)
# @dev Blocks between opening a case (or appealing) and the draw.
draw_delay: public(uint256)
# @dev Seconds a drawn panel has to rule.
ruling_period: public(uint256)
# @dev Seconds after a ruling in which it may be appealed.
appeal_period: public(uint256)
# @dev Bond per seat of the next panel that an appeal puts up.
appeal_bond: public(uint256)
# @dev Slashed from a verifier whose vote differs from the final ruling.
vote_stake: public(uint256)
# @dev Slashed from a drawn verifier that does not rule in its window.
no_show_fine: public(uint256)
# @dev Owner's changes waiting out CHANGE_DELAY: keccak256 of the change's calldata -> earliest time to make it.
queued_changes: public(HashMap[bytes32, uint256])

# @dev Verifiers that may be drawn.
verifiers: public(DynArray[address, MAX_VERIFIERS])
# @dev Each joined verifier's index in `verifiers`, plus one.
joined: public(HashMap[address, uint256])

# @dev Number of cases opened; ids start at 1.
case_count: public(uint256)
# @dev Each case.
cases: public(HashMap[uint256, Case])
# @dev The case of each ruled thing: keccak256(kind, target, slot) -> case id.
case_of: public(HashMap[bytes32, uint256])
# @dev The terms of each slot case's job (passed on with its ruling).
specs: HashMap[uint256, JobSpec]
# @dev Who sits on each seat of a case (seat = the round's offset + its index).
panels: public(HashMap[uint256, HashMap[uint256, address]])
# @dev Each seat's vote: 0 when none, else 1 | outcome << 8 | verified GPU-seconds << 16.
votes: public(HashMap[uint256, HashMap[uint256, uint256]])
# @dev Verifiers drawn for a case in any round: never drawn twice for it.
seated: public(HashMap[uint256, HashMap[address, bool]])
# @dev Each round's ruling.
round_rulings: public(HashMap[uint256, HashMap[uint256, uint8]])
# @dev Who appealed each round's ruling and the bond it put up.
appellants: public(HashMap[uint256, HashMap[uint256, address]])
appeal_bonds: public(HashMap[uint256, HashMap[uint256, uint256]])
# @dev Draws made for a case, mixed into the next draw's randomness.
draw_nonces: HashMap[uint256, uint256]

# @dev Tokens each account can withdraw.
credits: public(HashMap[address, uint256])
# @dev Sum of all credits.
total_credits: public(uint256)
# @dev Sum of what open cases hold.
total_held: public(uint256)


event VerifierJoined:
    verifier: indexed(address)


event VerifierLeft:
    verifier: indexed(address)


event CaseOpened:
    case_id: indexed(uint256)
    kind: uint8
    target: indexed(uint256)
    slot: uint8
    draw_block: uint256


event PanelDrawn:
    case_id: indexed(uint256)
    round: uint8
    seat: uint8
    verifier: indexed(address)
    ruling_deadline: uint256


event Ruled:
    case_id: indexed(uint256)
    round: uint8
    verifier: indexed(address)
    outcome: uint8
    verified_gpu_seconds: uint64


event RoundDecided:
    case_id: indexed(uint256)
    round: uint8
    ruling: uint8
    verified_gpu_seconds: uint64
    votes: uint8
    appeal_deadline: uint256


event NoShowFined:
    case_id: indexed(uint256)
    verifier: indexed(address)
    fined: uint256


event Appealed:
    case_id: indexed(uint256)
    round: uint8
    appellant: indexed(address)
    bond: uint256
    draw_block: uint256


event CaseClosed:
    case_id: indexed(uint256)
    ruling: uint8
    verified_gpu_seconds: uint64
    passed_on: bool


event VerifierSlashed:
    case_id: indexed(uint256)
    verifier: indexed(address)
    amount: uint256


event Rewarded:
    case_id: indexed(uint256)
    account: indexed(address)
    amount: uint256


event Withdrawn:
    account: indexed(address)
    amount: uint256


event ChangeQueued:
    change: indexed(bytes32)
    eta: uint256


event ParametersChanged:
    treasury: address
    draw_delay: uint256
    ruling_period: uint256
    appeal_period: uint256
    appeal_bond: uint256
    vote_stake: uint256
    no_show_fine: uint256


@deploy
def __init__(
    token_: IERC20,
    registry_: IRegistry,
    market_: address,
    reservations_: address,
    treasury_: address,
    draw_delay_: uint256,
    ruling_period_: uint256,
    appeal_period_: uint256,
    appeal_bond_: uint256,
    vote_stake_: uint256,
    no_show_fine_: uint256,
):
    """
    @notice Deploys the court; the deployer owns it. The registry's owner must authorize it
            to slash (`set_authorized`), and the market and reservations must name it their court.
    @param token_ The token.
    @param registry_ The registry holding verifier stakes.
    @param market_ The job market.
    @param reservations_ The reservations contract (the zero address when there is none).
    @param treasury_ Who receives unclaimed amounts.
    @param draw_delay_ Blocks between a case opening (or an appeal) and its draw.
    @param ruling_period_ Seconds a panel has to rule.
    @param appeal_period_ Seconds in which a ruling may be appealed.
    @param appeal_bond_ Bond per seat of the next panel.
    @param vote_stake_ Slashed from a vote against the final ruling.
    @param no_show_fine_ Slashed from a drawn verifier that does not rule.
    """
    ownable.__init__()
    token = token_
    registry = registry_
    market = market_
    reservations = reservations_
    self._set_parameters(
        treasury_, draw_delay_, ruling_period_, appeal_period_, appeal_bond_, vote_stake_, no_show_fine_
    )


@external
def set_parameters(
    treasury_: address,
    draw_delay_: uint256,
    ruling_period_: uint256,
    appeal_period_: uint256,
    appeal_bond_: uint256,
    vote_stake_: uint256,
    no_show_fine_: uint256,
):
    """
    @notice Changes the court's periods, bonds and penalties (cases under way use the new ones); the
            change must have been queued CHANGE_DELAY before (`queue_change`), so verifiers see it coming.
    @param treasury_ Who receives unclaimed amounts.
    @param draw_delay_ Blocks between a case opening (or an appeal) and its draw; at least 1.
    @param ruling_period_ Seconds a panel has to rule.
    @param appeal_period_ Seconds in which a ruling may be appealed.
    @param appeal_bond_ Bond per seat of the next panel.
    @param vote_stake_ Slashed from a vote against the final ruling.
    @param no_show_fine_ Slashed from a drawn verifier that does not rule.
    """
    ownable._check_owner()
    eta: uint256 = self.queued_changes[keccak256(slice(msg.data, 0, 228))]
    assert eta != 0, "court: change not queued"
    assert block.timestamp >= eta, "court: change still delayed"
    self.queued_changes[keccak256(slice(msg.data, 0, 228))] = 0
    self._set_parameters(
        treasury_, draw_delay_, ruling_period_, appeal_period_, appeal_bond_, vote_stake_, no_show_fine_
    )


@external
def queue_change(change: bytes32):
    """
    @notice Announces a `set_parameters` call: the one whose calldata hashes to `change` can be made
            CHANGE_DELAY from now, once.
    @param change keccak256 of the change's calldata.
    """
    ownable._check_owner()
    eta: uint256 = block.timestamp + CHANGE_DELAY
    self.queued_changes[change] = eta
    log ChangeQueued(change=change, eta=eta)


# ---------------------------------------------------------------- verifiers


@external
def join():
    """
    @notice Enters the caller, an active verifier of the registry, into the draws; it is drawn
            in proportion to its free stake (active stake no lease locks) for as long as it stays an
            active verifier.
    """
    assert self.joined[msg.sender] == 0, "court: already joined"
    assert staticcall registry.is_active_verifier(msg.sender), "court: not an active verifier"
    assert len(self.verifiers) < MAX_VERIFIERS, "court: too many verifiers"
    self.verifiers.append(msg.sender)
    self.joined[msg.sender] = len(self.verifiers)
    log VerifierJoined(verifier=msg.sender)


@external
def leave(account: address):
    """
    @notice Takes `account` out of the draws: the caller itself, or anyone no longer an active
            verifier (anyone may clear those). Seats already drawn must still be ruled on.
    @param account The verifier to remove.
    """
    index: uint256 = self.joined[account]
    assert index > 0, "court: not joined"
    assert msg.sender == account or not staticcall registry.is_active_verifier(account), "court: verifier is still active"
    last: address = self.verifiers.pop()
    if last != account:
        self.verifiers[index - 1] = last
        self.joined[last] = index
    self.joined[account] = 0
    log VerifierLeft(verifier=account)


# ---------------------------------------------------------------- cases


@external
def open_slot_case(job_id: uint256, spec: JobSpec, slot: uint8) -> uint256:
    """
    @notice Opens the case of a committed or disputed job slot; anyone may. A slot of a job
            with no verification policy needs a dispute first. One case per slot.
    @param job_id The job.
    @param spec Its terms.
    @param slot The slot.
    @return The case id.
    """
    key: bytes32 = keccak256(abi_encode(KIND_SLOT, job_id, slot))
    assert self.case_of[key] == 0, "court: case already open"
    assert (staticcall IMarket(market).jobs(job_id)).spec_hash == keccak256(abi_encode(spec)), "court: spec does not match job"
    s: MarketSlot = staticcall IMarket(market).slots(job_id, convert(slot, uint256))
    assert s.status == SLOT_COMMITTED or s.status == SLOT_DISPUTED, "court: slot is not committed"
    assert s.status == SLOT_DISPUTED or spec.policy != POLICY_NONE, "court: slot needs no ruling"
    case_id: uint256 = self._open(key, KIND_SLOT, job_id, slot)
    self.specs[case_id] = spec
    return case_id


@external
def open_reservation_case(reservation_id: uint256) -> uint256:
    """
    @notice Opens the case of a reservation (whether its provider served it), from the window's
            start until its attestation window closes; anyone may. One case per reservation.
    @param reservation_id The reservation.
    @return The case id.
    """
    assert reservations != empty(address), "court: no reservations contract"
    key: bytes32 = keccak256(abi_encode(KIND_RESERVATION, reservation_id, convert(0, uint8)))
    assert self.case_of[key] == 0, "court: case already open"
    r: ReservationView = staticcall IReservations(reservations).reservations(reservation_id)
    assert r.status in [RES_RESERVED, RES_DISPUTED, RES_SERVED], "court: reservation is not held"
    assert block.timestamp >= convert(r.start, uint256), "court: window not started"
    case_id: uint256 = self._open(key, KIND_RESERVATION, reservation_id, 0)
    assert block.timestamp < self._deadline(case_id, self.cases[case_id]), "court: too late for a ruling"
    return case_id


@external
@nonreentrant
def draw(case_id: uint256):
    """
    @notice Draws the panel of a case's round, once `draw_delay` blocks have passed; anyone may.
            When nobody can be drawn, the round ends: a first round with no ruling, an appeal
            round with the appealed ruling standing and the appellant's bond returned.
    @dev Non-reentrant: slashes and credits when the case closes.
    @param case_id The case.
    """
    c: Case = self.cases[case_id]
    assert c.state == STATE_DRAWING, "court: nothing to draw"
    assert block.number >= c.draw_block, "court: too early to draw"
    size: uint256 = self._size(c.round)
    offset: uint256 = self._offset(c.round)
    seats: DynArray[uint256, MAX_PANEL] = []
    for i: uint256 in range(size, bound=MAX_PANEL):
        seats.append(offset + i)
    filled: uint256 = self._fill(case_id, c, seats, block.timestamp + self.ruling_period)
    if filled == 0:
        if c.round > 0:
            # Nobody left to hear the appeal: the appealed ruling stands, the bond goes back.
            previous: uint256 = convert(c.round - 1, uint256)
            bond: uint256 = self.appeal_bonds[case_id][previous]
            self.appeal_bonds[case_id][previous] = 0
            c.held -= bond
            self.total_held -= bond
            self._credit(self.appellants[case_id][previous], bond)
            self.appellants[case_id][previous] = empty(address)
            c.round -= 1
        self._close(case_id, c)
        return
    c.seats = convert(filled, uint8)
    c.cast = 0
    c.state = STATE_VOTING
    c.ruling_deadline = block.timestamp + self.ruling_period
    self.cases[case_id] = c


@external
@nonreentrant
def rule(case_id: uint256, outcome: uint8, verified_gpu_seconds: uint64):
    """
    @notice A verifier drawn for the round under way rules: accept with the GPU-seconds it
            verified (a slot's claim caps them at the market), reject, or void. For a
            reservation, accept means served and reject not served. When the last seat has
            ruled, the round's majority is its ruling (no strict majority voids).
    @dev Non-reentrant: the last round's closing slashes and credits.
    @param case_id The case.
    @param outcome OUTCOME_ACCEPT, OUTCOME_REJECT or OUTCOME_VOID.
    @param verified_gpu_seconds GPU-seconds verified (accept only).
    """
    c: Case = self.cases[case_id]
    assert c.state == STATE_VOTING, "court: no ruling under way"
    assert block.timestamp < c.ruling_deadline, "court: ruling window closed"
    assert outcome <= OUTCOME_VOID, "court: unknown outcome"
    seat: uint256 = self._seat_of(case_id, c.round, msg.sender)
    assert seat < MAX_SEATS, "court: caller is not on the panel"
    assert self.votes[case_id][seat] == 0, "court: already ruled"
    # A verifier that became a party since it was drawn (it disputed the slot) may not rule.
    assert not msg.sender in self._parties(case_id, c), "court: verifier is a party"
    verified: uint64 = 0
    if outcome == OUTCOME_ACCEPT:
        verified = verified_gpu_seconds
    self.votes[case_id][seat] = 1 | (convert(outcome, uint256) << 8) | (convert(verified, uint256) << 16)
    c.cast += 1
    log Ruled(case_id=case_id, round=c.round, verifier=msg.sender, outcome=outcome, verified_gpu_seconds=verified)
    if c.cast == c.seats:
        self._decide(case_id, c)
    else:
        self.cases[case_id] = c


@external
@nonreentrant
def timeout(case_id: uint256):
    """
    @notice After a round's ruling window: fines every drawn verifier that did not rule and
            draws fresh verifiers for their seats while the slot or reservation can still take a
            ruling; otherwise the round is decided by the votes cast. Anyone may call.
    @dev Non-reentrant: slashes, and the closing credits.
    @param case_id The case.
    """
    c: Case = self.cases[case_id]
    assert c.state == STATE_VOTING, "court: no ruling under way"
    assert block.timestamp >= c.ruling_deadline, "court: ruling window still open"
    offset: uint256 = self._offset(c.round)
    empty_seats: DynArray[uint256, MAX_PANEL] = []
    fine: uint256 = self.no_show_fine
    for i: uint256 in range(self._size(c.round), bound=MAX_PANEL):
        seat: uint256 = offset + i
        v: address = self.panels[case_id][seat]
        if v == empty(address) or self.votes[case_id][seat] != 0:
            continue
        self.panels[case_id][seat] = empty(address)
        c.seats -= 1
        empty_seats.append(seat)
        fined: uint256 = 0
        if fine > 0:
            fined = extcall registry.slash(v, fine)
        c.held += fined
        self.total_held += fined
        log NoShowFined(case_id=case_id, verifier=v, fined=fined)
    new_deadline: uint256 = block.timestamp + self.ruling_period
    if len(empty_seats) > 0 and new_deadline < self._deadline(case_id, c):
        filled: uint256 = self._fill(case_id, c, empty_seats, new_deadline)
        if filled > 0:
            c.seats += convert(filled, uint8)
            c.ruling_deadline = new_deadline
            self.cases[case_id] = c
            return
    self._decide(case_id, c)


@external
@nonreentrant
def appeal(case_id: uint256):
    """
    @notice Appeals a case's latest ruling within its appeal window, putting up `appeal_bond`
            per seat of the next, larger panel (approve first); anyone may. A later round that
            overturns the ruling returns the bond with a reward; one that upholds it keeps the bond
            for the verifiers who ruled right.
    @dev Non-reentrant: pulls the bond in.
    @param case_id The case.
    """
    c: Case = self.cases[case_id]
    assert c.state == STATE_APPEALABLE, "court: nothing to appeal"
    assert block.timestamp < c.appeal_deadline, "court: appeal window closed"
    bond: uint256 = self.appeal_bond * self._size(c.round + 1)
    self.appellants[case_id][convert(c.round, uint256)] = msg.sender
    self.appeal_bonds[case_id][convert(c.round, uint256)] = bond
    c.held += bond
    self.total_held += bond
    c.round += 1
    c.state = STATE_DRAWING
    c.draw_block = block.number + self.draw_delay
    self.cases[case_id] = c
    log Appealed(case_id=case_id, round=c.round, appellant=msg.sender, bond=bond, draw_block=c.draw_block)
    if bond > 0:
        assert extcall token.transferFrom(msg.sender, self, bond, default_return_value=True), "court: transfer failed"


@external
@nonreentrant
def finalize(case_id: uint256):
    """
    @notice Closes a case whose appeal window passed without an appeal: its ruling is passed on,
            the verifiers who voted against it are slashed and the right side paid. Anyone may call.
    @dev Non-reentrant: slashes, credits and calls the market or the reservations contract.
    @param case_id The case.
    """
    c: Case = self.cases[case_id]
    assert c.state == STATE_APPEALABLE, "court: case is not ruled"
    assert block.timestamp >= c.appeal_deadline, "court: appeal window still open"
    self._close(case_id, c)


@external
@nonreentrant
def withdraw() -> uint256:
    """
    @notice Withdraws all of the caller's credit.
    @dev Non-reentrant: moves tokens out; the credit is zeroed first.
    @return The amount withdrawn.
    """
    amount: uint256 = self.credits[msg.sender]
    assert amount > 0, "court: nothing to withdraw"
    self.credits[msg.sender] = 0
    self.total_credits -= amount
    log Withdrawn(account=msg.sender, amount=amount)
    assert extcall token.transfer(msg.sender, amount, default_return_value=True), "court: transfer failed"
    return amount


# ---------------------------------------------------------------- views


@external
@view
def verifier_count() -> uint256:
    """
    @notice How many verifiers joined the draws.
    @return The number.
    """
    return len(self.verifiers)


@external
@view
def slot_case(job_id: uint256, slot: uint8) -> uint256:
    """
    @notice The case of a job slot.
    @param job_id The job.
    @param slot The slot.
    @return Its case id; 0 when none was opened.
    """
    return self.case_of[keccak256(abi_encode(KIND_SLOT, job_id, slot))]


@external
@view
def reservation_case(reservation_id: uint256) -> uint256:
    """
    @notice The case of a reservation.
    @param reservation_id The reservation.
    @return Its case id; 0 when none was opened.
    """
    return self.case_of[keccak256(abi_encode(KIND_RESERVATION, reservation_id, convert(0, uint8)))]


@external
@view
def panel(case_id: uint256, round: uint8) -> DynArray[address, MAX_PANEL]:
    """
    @notice The verifiers seated in a round of a case (an empty address for a vacant seat).
    @param case_id The case.
    @param round The round.
    @return One address per seat.
    """
    out: DynArray[address, MAX_PANEL] = []
    offset: uint256 = self._offset(round)
    for i: uint256 in range(self._size(round), bound=MAX_PANEL):
        out.append(self.panels[case_id][offset + i])
    return out


@external
@view
def deadline(case_id: uint256) -> uint256:
    """
    @notice The last moment the case's ruling can still be passed on.
    @param case_id The case.
    @return A timestamp; 0 when the slot or reservation can no longer take a ruling.
    """
    return self._deadline(case_id, self.cases[case_id])


@external
@view
def panel_size(round: uint8) -> uint256:
    """
    @notice Seats of a round's panel.
    @param round The round (0 for the first ruling).
    @return 1, 3 or 7.
    """
    return self._size(round)


# ---------------------------------------------------------------- internal


@internal
def _open(key: bytes32, kind: uint8, target: uint256, slot: uint8) -> uint256:
    case_id: uint256 = self.case_count + 1
    self.case_count = case_id
    self.case_of[key] = case_id
    # The draw runs in a later block: its randomness did not exist when the result was committed.
    draw_block: uint256 = block.number + self.draw_delay
    self.cases[case_id] = Case(
        kind=kind,
        state=STATE_DRAWING,
        round=0,
        seats=0,
        cast=0,
        ruling=NO_RULING,
        verified=0,
        target=target,
        slot=slot,
        draw_block=draw_block,
        ruling_deadline=0,
        appeal_deadline=0,
        held=0,
    )
    log CaseOpened(case_id=case_id, kind=kind, target=target, slot=slot, draw_block=draw_block)
    return case_id


@internal
def _fill(case_id: uint256, c: Case, seats: DynArray[uint256, MAX_PANEL], ruling_deadline: uint256) -> uint256:
    # Stake-weighted lot without replacement: the parties and anyone seated before weigh nothing.
    parties: DynArray[address, MAX_PARTIES] = self._parties(case_id, c)
    weights: DynArray[uint256, MAX_VERIFIERS] = []
    total: uint256 = 0
    for v: address in self.verifiers:
        w: uint256 = 0
        if not self.seated[case_id][v] and not v in parties and staticcall registry.is_active_verifier(v):
            # Its stake that no lease locks: a provider's collateral backs its leases, not its rulings.
            w = staticcall registry.free_stake(v)
        weights.append(w)
        total += w
    nonce: uint256 = self.draw_nonces[case_id]
    self.draw_nonces[case_id] = nonce + 1
    seed: bytes32 = keccak256(abi_encode(block.prevrandao, case_id, nonce))
    filled: uint256 = 0
    for seat: uint256 in seats:
        if total == 0:
            break
        point: uint256 = convert(keccak256(abi_encode(seed, seat)), uint256) % total
        for i: uint256 in range(len(weights), bound=MAX_VERIFIERS):
            w: uint256 = weights[i]
            if point < w:
                v: address = self.verifiers[i]
                self.panels[case_id][seat] = v
                self.seated[case_id][v] = True
                total -= w
                weights[i] = 0
                filled += 1
                log PanelDrawn(
                    case_id=case_id,
                    round=c.round,
                    seat=convert(seat, uint8),
                    verifier=v,
                    ruling_deadline=ruling_deadline,
                )
                break
            point -= w
    return filled


@internal
def _decide(case_id: uint256, c: Case):
    # The round's ruling: the strict majority of the votes cast (none: void); no votes leave the
    # ruling of the round before (none in a first round).
    offset: uint256 = self._offset(c.round)
    counts: uint256[3] = [0, 0, 0]
    accepted: DynArray[uint256, MAX_PANEL] = []
    cast: uint256 = 0
    for i: uint256 in range(self._size(c.round), bound=MAX_PANEL):
        vote: uint256 = self.votes[case_id][offset + i]
        if vote == 0:
            continue
        cast += 1
        outcome: uint256 = (vote >> 8) & 255
        counts[outcome] += 1
        if outcome == convert(OUTCOME_ACCEPT, uint256):
            # Insertion sort of the verified GPU-seconds, for the median.
            value: uint256 = vote >> 16
            accepted.append(value)
            j: uint256 = len(accepted) - 1
            for _k: uint256 in range(MAX_PANEL):
                if j == 0 or accepted[j - 1] <= value:
                    break
                accepted[j] = accepted[j - 1]
                j -= 1
            accepted[j] = value
    if cast == 0 and c.round > 0:
        # Nobody heard the appeal: the appealed ruling stands and the appellant's bond goes back.
        previous: uint256 = convert(c.round - 1, uint256)
        bond: uint256 = self.appeal_bonds[case_id][previous]
        self.appeal_bonds[case_id][previous] = 0
        c.held -= bond
        self.total_held -= bond
        self._credit(self.appellants[case_id][previous], bond)
        self.appellants[case_id][previous] = empty(address)
    if cast > 0:
        c.ruling = OUTCOME_VOID
        c.verified = 0
        for o: uint256 in range(3):
            if counts[o] * 2 > cast:
                c.ruling = convert(o, uint8)
        if c.ruling == OUTCOME_ACCEPT:
            c.verified = convert(accepted[(len(accepted) - 1) // 2], uint64)
    self.round_rulings[case_id][convert(c.round, uint256)] = c.ruling
    c.appeal_deadline = block.timestamp + self.appeal_period
    log RoundDecided(
        case_id=case_id,
        round=c.round,
        ruling=c.ruling,
        verified_gpu_seconds=c.verified,
        votes=convert(cast, uint8),
        appeal_deadline=c.appeal_deadline,
    )
    # A ruling may be appealed while a larger panel can still rule before the slot's deadline.
    if (
        c.ruling != NO_RULING
        and c.round + 1 < MAX_ROUNDS
        and c.appeal_deadline + self.ruling_period < self._deadline(case_id, c)
    ):
        c.state = STATE_APPEALABLE
        self.cases[case_id] = c
        return
    self._close(case_id, c)


@internal
def _close(case_id: uint256, c: Case):
    # Final: pass the ruling on, slash the votes against it, pay the right side.
    c.state = STATE_CLOSED
    self.cases[case_id] = c
    final: uint8 = c.ruling
    passed_on: bool = False
    if final != NO_RULING:
        passed_on = self._pass_on(case_id, c, final)
    log CaseClosed(case_id=case_id, ruling=final, verified_gpu_seconds=c.verified, passed_on=passed_on)

    pot: uint256 = c.held
    self.total_held -= c.held
    # Appellants: a right one gets its bond back; a wrong one's bond goes into the pot (it is held).
    right: DynArray[address, MAX_PANEL] = []
    for r: uint256 in range(convert(c.round, uint256), bound=MAX_SEATS):
        bond: uint256 = self.appeal_bonds[case_id][r]
        appellant: address = self.appellants[case_id][r]
        if appellant == empty(address):
            continue
        if self.round_rulings[case_id][r] != final:
            pot -= bond
            self._credit(appellant, bond)
            right.append(appellant)
    # Verifiers: every vote against the final ruling is slashed into the pot.
    winners: DynArray[address, MAX_SEATS] = []
    stake: uint256 = self.vote_stake
    last: uint256 = self._offset(c.round) + self._size(c.round)
    for seat: uint256 in range(last, bound=MAX_SEATS):
        vote: uint256 = self.votes[case_id][seat]
        if vote == 0:
            continue
        v: address = self.panels[case_id][seat]
        if final != NO_RULING and convert((vote >> 8) & 255, uint8) == final:
            winners.append(v)
        elif stake > 0:
            taken: uint256 = extcall registry.slash(v, stake)
            pot += taken
            log VerifierSlashed(case_id=case_id, verifier=v, amount=taken)
    # Half the pot to the right appellants, the rest to the verifiers who ruled right.
    to_appellants: uint256 = 0
    if len(right) > 0:
        to_appellants = pot // 2
        if len(winners) == 0:
            to_appellants = pot
        share: uint256 = to_appellants // len(right)
        for a: address in right:
            self._credit(a, share)
            log Rewarded(case_id=case_id, account=a, amount=share)
        to_appellants = share * len(right)
    rest: uint256 = pot - to_appellants
    if len(winners) > 0:
        share: uint256 = rest // len(winners)
        for w: address in winners:
            self._credit(w, share)
            log Rewarded(case_id=case_id, account=w, amount=share)
        rest -= share * len(winners)
    self._credit(self.treasury, rest)


@internal
def _pass_on(case_id: uint256, c: Case, outcome: uint8) -> bool:
    # The ruled contract may refuse (its window closed, or a party ended the slot meanwhile): the
    # case still closes and its verifiers are still held to account.
    ok: bool = False
    response: Bytes[32] = b""
    if c.kind == KIND_SLOT:
        ok, response = raw_call(
            market,
            abi_encode(
                c.target,
                self.specs[case_id],
                c.slot,
                outcome,
                c.verified,
                method_id=method_id(
                    "attest(uint256,(address,bytes32,uint8,uint16,uint32,uint8,uint8,uint8,uint256,uint64,uint64,uint64,uint64,uint64),uint8,uint8,uint64)"
                ),
            ),
            max_outsize=32,
            revert_on_failure=False,
        )
    elif outcome == OUTCOME_REJECT:
        ok, response = raw_call(
            reservations,
            abi_encode(c.target, method_id=method_id("attest_failure(uint256)")),
            max_outsize=32,
            revert_on_failure=False,
        )
    elif outcome == OUTCOME_ACCEPT:
        ok, response = raw_call(
            reservations,
            abi_encode(c.target, method_id=method_id("attest_served(uint256)")),
            max_outsize=32,
            revert_on_failure=False,
        )
    return ok


@internal
@view
def _parties(case_id: uint256, c: Case) -> DynArray[address, MAX_PARTIES]:
    # Who may never sit on this case: read afresh, since a dispute adds a disputer.
    out: DynArray[address, MAX_PARTIES] = []
    if c.kind == KIND_SLOT:
        spec: JobSpec = self.specs[case_id]
        s: MarketSlot = staticcall IMarket(market).slots(c.target, convert(c.slot, uint256))
        out.append(spec.requester)
        out.append(s.disputer)
        if s.provider.is_contract:
            # A pool: its operator and the member that ran the slot are parties too.
            out.append(self._read_address(s.provider, method_id("operator()")))
            out.append(
                self._read_address(
                    s.provider,
                    abi_encode(c.target, convert(c.slot, uint256), method_id=method_id("assignments(uint256,uint256)")),
                )
            )
        # Every provider of the job: one that ran another slot of a redundant job is a competitor.
        for i: uint256 in range(convert(spec.redundancy, uint256), bound=MAX_JOB_SLOTS):
            out.append((staticcall IMarket(market).slots(c.target, i)).provider)
    else:
        r: ReservationView = staticcall IReservations(reservations).reservations(c.target)
        out.append(r.provider)
        out.append(r.holder)
    return out


@internal
@view
def _read_address(target: address, data: Bytes[100]) -> address:
    ok: bool = False
    response: Bytes[32] = b""
    ok, response = raw_call(target, data, max_outsize=32, is_static_call=True, revert_on_failure=False)
    if not ok or len(response) < 32:
        return empty(address)
    return convert(convert(response, uint256) & (2**160 - 1), address)


@internal
@view
def _deadline(case_id: uint256, c: Case) -> uint256:
    # The end of the window in which the ruled contract takes a ruling (0: it no longer does).
    if c.kind == KIND_SLOT:
        s: MarketSlot = staticcall IMarket(market).slots(c.target, convert(c.slot, uint256))
        window: uint256 = convert(self.specs[case_id].challenge_window, uint256)
        if s.status == SLOT_COMMITTED:
            return convert(s.committed_at, uint256) + window
        if s.status == SLOT_DISPUTED:
            return convert(s.committed_at, uint256) + 2 * window
        return 0
    r: ReservationView = staticcall IReservations(reservations).reservations(c.target)
    period: uint256 = staticcall IReservations(reservations).challenge_period()
    end: uint256 = convert(r.start, uint256) + convert(r.duration, uint256) + period
    if r.status == RES_DISPUTED:
        return end + period
    if r.status == RES_RESERVED or r.status == RES_SERVED:
        return end
    return 0


@internal
@view
def _seat_of(case_id: uint256, round: uint8, account: address) -> uint256:
    offset: uint256 = self._offset(round)
    for i: uint256 in range(self._size(round), bound=MAX_PANEL):
        if self.panels[case_id][offset + i] == account:
            return offset + i
    return MAX_SEATS


@internal
@pure
def _size(round: uint8) -> uint256:
    # 1, 3, 7: each appeal draws 2n + 1 verifiers.
    return (1 << (convert(round, uint256) + 1)) - 1


@internal
@pure
def _offset(round: uint8) -> uint256:
    # Seats of the rounds before: 0, 1, 4.
    return (1 << (convert(round, uint256) + 1)) - 2 - convert(round, uint256)


@internal
def _credit(account: address, amount: uint256):
    if amount == 0:
        return
    self.credits[account] += amount
    self.total_credits += amount


@internal
def _set_parameters(
    treasury_: address,
    draw_delay_: uint256,
    ruling_period_: uint256,
    appeal_period_: uint256,
    appeal_bond_: uint256,
    vote_stake_: uint256,
    no_show_fine_: uint256,
):
    assert treasury_ != empty(address), "court: treasury is the zero address"
    assert draw_delay_ >= 1 and draw_delay_ <= 256, "court: draw delay out of range"
    assert ruling_period_ >= 1 and ruling_period_ <= MAX_PERIOD, "court: ruling period out of range"
    assert appeal_period_ >= 1 and appeal_period_ <= MAX_PERIOD, "court: appeal period out of range"
    self.treasury = treasury_
    self.draw_delay = draw_delay_
    self.ruling_period = ruling_period_
    self.appeal_period = appeal_period_
    self.appeal_bond = appeal_bond_
    self.vote_stake = vote_stake_
    self.no_show_fine = no_show_fine_
    log ParametersChanged(
        treasury=treasury_,
        draw_delay=draw_delay_,
        ruling_period=ruling_period_,
        appeal_period=appeal_period_,
        appeal_bond=appeal_bond_,
        vote_stake=vote_stake_,
        no_show_fine=no_show_fine_,
    )
