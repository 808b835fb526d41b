"""ProviderRegistry: stakes, unbonding, offers, verifiers, throughput attestations, and the
market-only lock, release and slash."""

from __future__ import annotations

import boa
import pytest

from tests.contracts.contract_helpers import (
    AUCTION_INSTANT,
    BASE_SLASH,
    DEFAULT_PRICE_FLOOR,
    DEVICE_CPU,
    DEVICE_CUDA,
    E18,
    MIN_PROVIDER_STAKE,
    MIN_VERIFIER_STAKE,
    UNBONDING_PERIOD,
    deploy_with_false_token,
    load,
    make_offer,
    make_spec,
    now,
    one_event,
    owner_change,
    queue_owner_change,
)

# ---------------------------------------------------------------- owner


def test_registry__deploys_with_its_parameters(registry, token, market, owner):
    assert registry.token() == token.address
    assert registry.market() == market.address
    assert registry.owner() == owner
    assert registry.min_provider_stake() == MIN_PROVIDER_STAKE
    assert registry.min_verifier_stake() == MIN_VERIFIER_STAKE
    assert registry.unbonding_period() == UNBONDING_PERIOD
    assert registry.DEVICE_CPU() == 0 and registry.DEVICE_CUDA() == 1
    assert registry.CAPACITY_FLAG_BPS() == 20_000


def test_set_market__a_second_time__reverts(registry, owner, stranger):
    with boa.env.prank(owner), boa.reverts("registry: market already set"):
        registry.set_market(stranger)


def test_set_market__by_a_stranger__reverts(registry, stranger):
    with boa.env.prank(stranger), boa.reverts("ownable: caller is not the owner"):
        registry.set_market(stranger)


def test_set_market__on_a_fresh_registry__sets_it_once__and_logs(token, stranger):
    # A deployer of its own: anchors rewind nonces, so an address the module's deployer already used
    # would carry storage traces of another contract, which boa's revert report cannot read.
    deployer = boa.env.generate_address()
    with boa.env.prank(deployer):
        fresh = load("ProviderRegistry", token.address, 1, 1, 1)
        with boa.reverts("registry: market is the zero address"):
            fresh.set_market("0x" + "00" * 20)
        fresh.set_market(stranger)
        assert one_event(fresh, "MarketSet").market == stranger
    assert fresh.market() == stranger


def test_set_parameters__by_the_owner__changes_them__and_logs(registry, owner):
    with boa.env.prank(owner), boa.reverts("registry: change not queued"):
        registry.set_parameters(2 * E18, 3 * E18, 60)
    owner_change(registry, owner, "set_parameters", 2 * E18, 3 * E18, 60)
    log = one_event(registry, "ParametersChanged")
    assert (log.min_provider_stake, log.min_verifier_stake, log.unbonding_period) == (2 * E18, 3 * E18, 60)
    assert registry.min_provider_stake() == 2 * E18
    assert registry.min_verifier_stake() == 3 * E18
    assert registry.unbonding_period() == 60


def test_set_parameters__with_a_minimum_stake_beyond_its_packed_96_bits__reverts(registry, owner):
    queue_owner_change(registry, owner, "set_parameters", 2**96, 3 * E18, 60)
    with boa.env.prank(owner), boa.reverts("registry: minimum stake too large"):
        registry.set_parameters(2**96, 3 * E18, 60)
    owner_change(registry, owner, "set_parameters", 2**96 - 1, 3 * E18, 60)
    assert registry.min_provider_stake() == 2**96 - 1
    assert registry.market() != "0x" + "00" * 20


def test_set_parameters__by_a_stranger__reverts(registry, stranger):
    with boa.env.prank(stranger), boa.reverts("ownable: caller is not the owner"):
        registry.set_parameters(0, 0, 0)


def test_transfer_ownership__hands_the_owner_role_over(registry, owner, stranger):
    with boa.env.prank(owner):
        registry.transfer_ownership(stranger)
    assert registry.owner() == stranger
    with boa.env.prank(owner), boa.reverts("ownable: caller is not the owner"):
        registry.set_parameters(0, 0, 0)


# ---------------------------------------------------------------- stake


def test_stake__pulls_tokens__and_logs_the_new_active_stake(registry, token, provider):
    before = token.balanceOf(provider)
    with boa.env.prank(provider):
        registry.stake(10 * E18)
        registry.stake(5 * E18)
    log = one_event(registry, "Staked")
    assert (log.account, log.amount, log.active) == (provider, 5 * E18, 15 * E18)
    assert registry.stakes(provider).active == 15 * E18
    assert registry.total_stake(provider) == 15 * E18
    assert token.balanceOf(provider) == before - 15 * E18
    assert token.balanceOf(registry.address) == 15 * E18


def test_stake__of_zero__reverts(registry, provider):
    with boa.env.prank(provider), boa.reverts("registry: zero stake"):
        registry.stake(0)


def test_stake__without_allowance__reverts(registry, token, provider):
    with boa.env.prank(provider):
        token.approve(registry.address, 0)
        with boa.reverts("erc20: insufficient allowance"):
            registry.stake(1)


def test_request_unbond__moves_active_to_unbonding__and_logs(registry, provider):
    with boa.env.prank(provider):
        registry.stake(10 * E18)
        registry.request_unbond(4 * E18)
    log = one_event(registry, "UnbondRequested")
    assert (log.account, log.amount, log.unbond_at) == (provider, 4 * E18, now() + UNBONDING_PERIOD)
    s = registry.stakes(provider)
    assert (s.active, s.unbonding, s.unbond_at) == (6 * E18, 4 * E18, now() + UNBONDING_PERIOD)
    assert registry.total_stake(provider) == 10 * E18


def test_request_unbond__of_zero__reverts(registry, provider):
    with boa.env.prank(provider), boa.reverts("registry: zero amount"):
        registry.request_unbond(0)


def test_request_unbond__above_the_active_stake__reverts(registry, provider):
    with boa.env.prank(provider):
        registry.stake(10 * E18)
        with boa.reverts("registry: amount exceeds active stake"):
            registry.request_unbond(10 * E18 + 1)


def test_request_unbond__a_second_time__restarts_the_period(registry, provider):
    with boa.env.prank(provider):
        registry.stake(10 * E18)
        registry.request_unbond(1 * E18)
        boa.env.time_travel(seconds=UNBONDING_PERIOD - 10)
        registry.request_unbond(1 * E18)
    s = registry.stakes(provider)
    assert s.unbonding == 2 * E18
    assert s.unbond_at == now() + UNBONDING_PERIOD


def test_withdraw_unbonded__after_the_period__returns_the_tokens__and_logs(registry, token, provider):
    before = token.balanceOf(provider)
    with boa.env.prank(provider):
        registry.stake(10 * E18)
        registry.request_unbond(4 * E18)
        boa.env.time_travel(seconds=UNBONDING_PERIOD)
        registry.withdraw_unbonded()
    log = one_event(registry, "StakeWithdrawn")
    assert (log.account, log.amount) == (provider, 4 * E18)
    assert registry.stakes(provider).unbonding == 0
    assert registry.stakes(provider).active == 6 * E18
    assert token.balanceOf(provider) == before - 6 * E18
    assert token.balanceOf(registry.address) == 6 * E18


def test_withdraw_unbonded__one_second_early__reverts(registry, provider):
    with boa.env.prank(provider):
        registry.stake(10 * E18)
        registry.request_unbond(4 * E18)
        boa.env.time_travel(seconds=UNBONDING_PERIOD - 1)
        with boa.reverts("registry: still unbonding"):
            registry.withdraw_unbonded()


def test_withdraw_unbonded__with_nothing_unbonding__reverts(registry, provider):
    with boa.env.prank(provider):
        registry.stake(10 * E18)
        with boa.reverts("registry: nothing unbonding"):
            registry.withdraw_unbonded()


def test_withdraw_unbonded__twice__reverts_the_second_time(registry, provider):
    with boa.env.prank(provider):
        registry.stake(10 * E18)
        registry.request_unbond(4 * E18)
        boa.env.time_travel(seconds=UNBONDING_PERIOD)
        registry.withdraw_unbonded()
        with boa.reverts("registry: nothing unbonding"):
            registry.withdraw_unbonded()


def test_withdraw_unbonded__while_holding_a_lease__reverts_until_it_is_released(registry, flow, provider, requester):
    flow.register_provider(provider, stake=MIN_PROVIDER_STAKE + 10 * E18)
    spec = make_spec(requester, auction=AUCTION_INSTANT, run_duration=3_600)
    job_id = flow.post(spec)
    flow.take(job_id, spec, provider)
    with boa.env.prank(provider):
        registry.request_unbond(10 * E18)
    boa.env.time_travel(seconds=UNBONDING_PERIOD)
    with boa.env.prank(provider), boa.reverts("registry: provider holds leases"):
        registry.withdraw_unbonded()
    # The lease ends (run deadline missed: slashed and released); what is left of the stake leaves.
    flow.settle(job_id, spec, 0)
    assert registry.stakes(provider).active_jobs == 0
    with boa.env.prank(provider):
        registry.withdraw_unbonded()
    # The slash (slot value at the floor + base slash) came out of the active stake first.
    s = registry.stakes(provider)
    assert (s.active, s.unbonding) == (MIN_PROVIDER_STAKE - DEFAULT_PRICE_FLOOR - BASE_SLASH, 0)


# ---------------------------------------------------------------- providers


def test_register_provider__with_the_minimum_stake__stores_the_offer__and_logs(registry, flow, provider):
    flow.stake(provider, MIN_PROVIDER_STAKE)
    offer = make_offer(provider, endpoint="gpu.example:443")
    with boa.env.prank(provider):
        registry.register_provider(offer)
    log = one_event(registry, "ProviderRegistered")
    assert (log.provider, log.device_kind, log.gpu_count, log.memory_mb) == (provider, DEVICE_CUDA, 8, 141_000)
    assert (log.price_floor, log.endpoint, log.signer) == (DEFAULT_PRICE_FLOOR, "gpu.example:443", provider)
    assert registry.is_provider(provider)
    assert tuple(registry.offers(provider)) == tuple(offer)
    assert registry.price_floor(provider) == DEFAULT_PRICE_FLOOR


def test_register_provider__again__replaces_the_offer(registry, flow, provider):
    flow.register_provider(provider)
    with boa.env.prank(provider):
        registry.register_provider(make_offer(provider, price_floor=7))
    assert registry.price_floor(provider) == 7


def test_register_provider__below_the_minimum_stake__reverts(registry, flow, provider):
    flow.stake(provider, MIN_PROVIDER_STAKE - 1)
    with boa.env.prank(provider), boa.reverts("registry: stake below minimum"):
        registry.register_provider(make_offer(provider))


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"device_kind": 2}, "registry: unknown device kind"),
        ({"gpu_count": 0}, "registry: no devices"),
        ({"memory_mb": 0}, "registry: no device memory"),
        ({"price_floor": 0}, "registry: zero price floor"),
        ({"signer": "0x" + "00" * 20}, "registry: no signer"),
        ({"endpoint": ""}, "registry: no endpoint"),
    ],
)
def test_register_provider__with_a_bad_offer__reverts(registry, flow, provider, override, reason):
    flow.stake(provider, MIN_PROVIDER_STAKE)
    with boa.env.prank(provider), boa.reverts(reason):
        registry.register_provider(make_offer(provider, **override))


def test_deregister_provider__stops_eligibility__and_logs(registry, flow, provider):
    flow.register_provider(provider)
    assert registry.is_eligible(provider, DEVICE_CUDA, 1, 1, 0)
    with boa.env.prank(provider):
        registry.deregister_provider()
    assert one_event(registry, "ProviderDeregistered").provider == provider
    assert not registry.is_provider(provider)
    assert not registry.is_eligible(provider, DEVICE_CUDA, 1, 1, 0)


def test_deregister_provider__when_not_registered__reverts(registry, stranger):
    with boa.env.prank(stranger), boa.reverts("registry: not a provider"):
        registry.deregister_provider()


def test_set_price_floor__changes_only_the_price__and_logs(registry, flow, provider):
    flow.register_provider(provider)
    before = registry.offers(provider)
    with boa.env.prank(provider):
        registry.set_price_floor(7 * 10**17)
    event = one_event(registry, "PriceFloorChanged")
    assert (event.provider, event.price_floor) == (provider, 7 * 10**17)
    assert registry.price_floor(provider) == 7 * 10**17
    after = registry.offers(provider)
    assert after.endpoint == before.endpoint and after.signer == before.signer and after.gpu_count == before.gpu_count


def test_set_price_floor__by_a_non_provider_or_to_zero__reverts(registry, flow, provider, stranger):
    with boa.env.prank(stranger), boa.reverts("registry: not a provider"):
        registry.set_price_floor(1)
    flow.register_provider(provider)
    with boa.env.prank(provider), boa.reverts("registry: zero price floor"):
        registry.set_price_floor(0)
    with boa.env.prank(provider):
        registry.deregister_provider()
    with boa.env.prank(provider), boa.reverts("registry: not a provider"):
        registry.set_price_floor(1)


def test_is_eligible__checks_registration_stake_kind_devices_and_memory(registry, owner, flow, provider, stranger):
    flow.register_provider(provider)
    assert registry.is_eligible(provider, DEVICE_CUDA, 8, 141_000, 0)
    assert not registry.is_eligible(provider, DEVICE_CPU, 1, 1, 0)
    assert not registry.is_eligible(provider, DEVICE_CUDA, 9, 1, 0)
    # Stake locked by leases backs no new bid: eligibility needs the lease's collateral free.
    assert not registry.is_eligible(provider, DEVICE_CUDA, 1, 1, MIN_PROVIDER_STAKE + 1)
    assert not registry.is_eligible(provider, DEVICE_CUDA, 1, 141_001, 0)
    assert not registry.is_eligible(stranger, DEVICE_CUDA, 1, 1, 0)
    # Raising the minimum stake makes an under-staked provider ineligible.
    owner_change(registry, owner, "set_parameters", MIN_PROVIDER_STAKE + 1, MIN_VERIFIER_STAKE, UNBONDING_PERIOD)
    assert not registry.is_eligible(provider, DEVICE_CUDA, 1, 1, 0)


# ---------------------------------------------------------------- verifiers


def test_register_verifier__with_the_minimum_stake__logs__and_is_active(registry, flow, verifier):
    flow.stake(verifier, MIN_VERIFIER_STAKE)
    with boa.env.prank(verifier):
        registry.register_verifier()
    assert one_event(registry, "VerifierRegistered").verifier == verifier
    assert registry.is_verifier(verifier)
    assert registry.is_active_verifier(verifier)


def test_register_verifier__below_the_minimum_stake__reverts(registry, flow, verifier):
    flow.stake(verifier, MIN_VERIFIER_STAKE - 1)
    with boa.env.prank(verifier), boa.reverts("registry: stake below minimum"):
        registry.register_verifier()


def test_is_active_verifier__after_unbonding_below_the_minimum__is_false(registry, flow, verifier):
    flow.register_verifier(verifier)
    with boa.env.prank(verifier):
        registry.request_unbond(1)
    assert registry.is_verifier(verifier)
    assert not registry.is_active_verifier(verifier)


def test_deregister_verifier__logs__and_deactivates(registry, flow, verifier):
    flow.register_verifier(verifier)
    with boa.env.prank(verifier):
        registry.deregister_verifier()
    assert one_event(registry, "VerifierDeregistered").verifier == verifier
    assert not registry.is_active_verifier(verifier)


def test_deregister_verifier__when_not_registered__reverts(registry, stranger):
    with boa.env.prank(stranger), boa.reverts("registry: not a verifier"):
        registry.deregister_verifier()


def test_attest_throughput__within_the_claim__records_it_unflagged__and_logs(registry, flow, provider, verifier):
    flow.register_provider(provider, claimed_gflops=60_000)
    flow.register_verifier(verifier)
    with boa.env.prank(verifier):
        registry.attest_throughput(provider, 30_000)  # claim exactly 2x the measurement: not flagged
    log = one_event(registry, "ThroughputAttested")
    assert (log.provider, log.verifier, log.gflops, log.claimed_gflops, log.flagged) == (
        provider,
        verifier,
        30_000,
        60_000,
        False,
    )
    a = registry.attestations(provider)
    assert (a.gflops, a.verifier, a.attested_at, a.flagged) == (30_000, verifier, now(), False)


def test_attest_throughput__beyond_twice_the_measurement__flags_the_provider(registry, flow, provider, verifier):
    flow.register_provider(provider, claimed_gflops=60_000)
    flow.register_verifier(verifier)
    with boa.env.prank(verifier):
        registry.attest_throughput(provider, 29_999)
    assert one_event(registry, "ThroughputAttested").flagged
    assert registry.attestations(provider).flagged


def test_attest_throughput__by_a_stranger__reverts(registry, flow, provider, stranger):
    flow.register_provider(provider)
    with boa.env.prank(stranger), boa.reverts("registry: caller is not a verifier"):
        registry.attest_throughput(provider, 1)


def test_attest_throughput__on_itself__reverts(registry, flow, provider):
    flow.register_provider(provider)
    flow.register_verifier(provider, stake=0)
    with boa.env.prank(provider), boa.reverts("registry: verifier cannot attest itself"):
        registry.attest_throughput(provider, 1)


def test_attest_throughput__on_an_unregistered_account__reverts(registry, flow, verifier, stranger):
    flow.register_verifier(verifier)
    with boa.env.prank(verifier), boa.reverts("registry: not a provider"):
        registry.attest_throughput(stranger, 1)


# ---------------------------------------------------------------- market only


@pytest.mark.parametrize("call", ["lock", "release", "slash"])
def test_market_only_functions__called_by_a_stranger__revert(registry, flow, provider, stranger, call):
    flow.register_provider(provider)
    args = {"lock": (provider, 1), "release": (provider, 1, True), "slash": (provider, 1)}[call]
    with boa.env.prank(stranger), boa.reverts("registry: caller may not lock or slash"):
        getattr(registry, call)(*args)


def test_lock_release_slash__called_by_the_market__count_leases_reputation_and_stake(
    registry, market, token, flow, provider
):
    flow.register_provider(provider, stake=MIN_PROVIDER_STAKE)
    with boa.env.prank(market.address):
        assert registry.lock(provider, 300 * E18)
        log = one_event(registry, "StakeLocked")
        assert (log.provider, log.active_jobs, log.amount, log.locked) == (provider, 1, 300 * E18, 300 * E18)
        registry.lock(provider, 400 * E18)
    with boa.env.prank(provider):
        registry.request_unbond(300 * E18)
    with boa.env.prank(market.address):
        # Nothing free is left, and the active stake is below the minimum: no new lease.
        assert not registry.lock(provider, 1)
        registry.release(provider, 400 * E18, True)
        log = one_event(registry, "StakeReleased")
        assert (log.provider, log.completed, log.active_jobs, log.locked) == (provider, True, 1, 300 * E18)
        registry.release(provider, 300 * E18, False)
        # Active stake first, then unbonding: unbonding stake is still slashable.
        taken = registry.slash(provider, MIN_PROVIDER_STAKE - 100 * E18)
        assert one_event(registry, "StakeSlashed").amount == MIN_PROVIDER_STAKE - 100 * E18
    assert taken == MIN_PROVIDER_STAKE - 100 * E18
    s = registry.stakes(provider)
    assert (s.active, s.unbonding, s.active_jobs) == (0, 100 * E18, 0)
    r = registry.reputation(provider)
    assert (r.completed, r.failed, r.slashed) == (1, 1, 1)
    assert token.balanceOf(market.address) == MIN_PROVIDER_STAKE - 100 * E18
    with boa.env.prank(market.address):
        # More than what is left: takes what there is, then nothing.
        assert registry.slash(provider, 10**30) == 100 * E18
        assert registry.slash(provider, 1) == 0
    assert registry.total_stake(provider) == 0
    assert registry.reputation(provider).slashed == 3
    assert token.balanceOf(registry.address) == 0


# ---------------------------------------------------------------- token failures


def test_stake_and_withdraw__when_the_token_returns_false__revert(owner, treasury, provider):
    d = deploy_with_false_token(owner, treasury)
    d.token.mint(provider, 10 * E18)
    d.token.set_failing(True)
    with boa.env.prank(provider), boa.reverts("registry: transfer failed"):
        d.registry.stake(10 * E18)
    d.token.set_failing(False)
    with boa.env.prank(provider):
        d.registry.stake(10 * E18)
        d.registry.request_unbond(10 * E18)
    boa.env.time_travel(seconds=UNBONDING_PERIOD)
    d.token.set_failing(True)
    with boa.env.prank(provider), boa.reverts("registry: transfer failed"):
        d.registry.withdraw_unbonded()
