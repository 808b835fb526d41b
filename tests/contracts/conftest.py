"""Fixtures for the contract suite: one deployment per module, rolled back after every test.

titanoboa's pytest plugin (``boa.test.plugin``, loaded through its ``pytest11`` entry point)
opens a ``boa.env.anchor()`` around every fixture set-up and every test: the module-scoped
fixtures below deploy the token, registry and market once per module, and each test starts from
that state again (block time included). Hypothesis examples are anchored the same way.

The constants, ``Spec``/``Offer`` tuples and the ``Flow`` helper live in ``contract_helpers``.
"""

from __future__ import annotations

from typing import Any

import boa
import pytest

from tests.contracts.contract_helpers import Deployment, Flow, Spec, deploy, fund, make_spec

# ---------------------------------------------------------------- actors


@pytest.fixture(scope="session")
def owner() -> str:
    return boa.env.generate_address("owner")


@pytest.fixture(scope="session")
def treasury() -> str:
    return boa.env.generate_address("treasury")


@pytest.fixture(scope="session")
def requester() -> str:
    return boa.env.generate_address("requester")


@pytest.fixture(scope="session")
def provider() -> str:
    return boa.env.generate_address("provider")


@pytest.fixture(scope="session")
def provider2() -> str:
    return boa.env.generate_address("provider2")


@pytest.fixture(scope="session")
def provider3() -> str:
    return boa.env.generate_address("provider3")


@pytest.fixture(scope="session")
def verifier() -> str:
    return boa.env.generate_address("verifier")


@pytest.fixture(scope="session")
def stranger() -> str:
    return boa.env.generate_address("stranger")


# ---------------------------------------------------------------- deployment


@pytest.fixture(scope="module")
def deployment(
    owner: str,
    treasury: str,
    requester: str,
    provider: str,
    provider2: str,
    provider3: str,
    verifier: str,
    stranger: str,
) -> Deployment:
    d = deploy(owner, treasury, court=verifier)
    for account in (requester, provider, provider2, provider3, verifier, stranger):
        fund(d, account)
    return d


@pytest.fixture(scope="module")
def token(deployment: Deployment) -> Any:
    return deployment.token


@pytest.fixture(scope="module")
def registry(deployment: Deployment) -> Any:
    return deployment.registry


@pytest.fixture(scope="module")
def market(deployment: Deployment) -> Any:
    return deployment.market


@pytest.fixture(scope="module")
def flow(deployment: Deployment) -> Flow:
    return Flow(deployment)


@pytest.fixture(scope="module")
def providers(flow: Flow, provider: str, provider2: str, provider3: str, verifier: str) -> Flow:
    """The three providers registered with the minimum stake and the verifier registered."""
    for p in (provider, provider2, provider3):
        flow.register_provider(p)
    flow.register_verifier(verifier)
    return flow


@pytest.fixture
def spec(requester: str) -> Spec:
    """A default sealed, redundancy-1 job of ``requester``, relative to the test's start time."""
    return make_spec(requester)
