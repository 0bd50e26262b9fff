"""Provider fakes for the suite, registered in tests/conftest.py through `pytest_plugins`.

Each fake server starts once per session on a free loopback port. The per-test fixtures
(`twilio_fake`, `stripe_fake`, `calendly_fake`, `crm_fake`) clear its state and point the
app's settings (credentials and base URL) at it for that test only, restoring them after.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.calendly import CalendlyFake
from tests.fakes.crm import CrmFake
from tests.fakes.server import Fake, serve
from tests.fakes.stripe import StripeFake
from tests.fakes.twilio import TwilioFake


def _running(fake: Fake) -> Iterator[Fake]:
    with serve(fake) as url:
        fake.url = url
        yield fake


def _configure(fake, app, monkeypatch) -> Iterator:
    fake.reset()
    for key, value in fake.config().items():
        monkeypatch.setitem(app.config, key, value)
    yield fake
    fake.reset()


@pytest.fixture(scope="session")
def _twilio_server() -> Iterator[TwilioFake]:
    yield from _running(TwilioFake())


@pytest.fixture(scope="session")
def _stripe_server() -> Iterator[StripeFake]:
    yield from _running(StripeFake())


@pytest.fixture(scope="session")
def _calendly_server() -> Iterator[CalendlyFake]:
    yield from _running(CalendlyFake())


@pytest.fixture(scope="session")
def _crm_server() -> Iterator[CrmFake]:
    yield from _running(CrmFake())


@pytest.fixture
def twilio_fake(_twilio_server, app, monkeypatch) -> Iterator[TwilioFake]:
    """Twilio's REST API; webhooks it builds are signed for the app's public URL."""
    _twilio_server.public_base_url = lambda: app.config.get("PUBLIC_BASE_URL") or "http://localhost"
    if not app.config.get("PUBLIC_BASE_URL"):
        # Jobs have no request to build the StatusCallback URL from; the test client's is this.
        monkeypatch.setitem(app.config, "PUBLIC_BASE_URL", "http://localhost")
    yield from _configure(_twilio_server, app, monkeypatch)


@pytest.fixture
def stripe_fake(_stripe_server, app, monkeypatch) -> Iterator[StripeFake]:
    """Stripe's API; `STRIPE_WEBHOOK_SECRETS` holds the secret its events are signed with."""
    yield from _configure(_stripe_server, app, monkeypatch)


@pytest.fixture
def calendly_fake(_calendly_server, app, monkeypatch) -> Iterator[CalendlyFake]:
    """Calendly's API and OAuth server, with the app's client id, secret and signing key."""
    yield from _configure(_calendly_server, app, monkeypatch)


@pytest.fixture
def crm_fake(_crm_server, app, monkeypatch) -> Iterator[CrmFake]:
    """The external CRM (HubSpot-compatible), with `CRM_SYNC_URL` and `CRM_SYNC_TOKEN` set."""
    yield from _configure(_crm_server, app, monkeypatch)
