"""Demo mode: without Twilio credentials, `flask serve` runs the Twilio fake on loopback and
points the app at it, so a message goes out, gets its ticks and an answer; the health card
says which Twilio the app talks to.

The fake runs as `flask serve` runs it (a file, in its own process, without pytest), here ten
times faster than in a demo. The app answers on a live server, its jobs run in real workers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from rq import SimpleWorker

from crm.cli import twilio_demo_env, wants_twilio_demo
from crm.contacts.models import Contact
from crm.conversations import services
from crm.conversations.models import Conversation, Message
from crm.database import utcnow
from crm.extensions import db
from crm.redis_client import get_redis
from crm.webhooks.models import WebhookEvent
from jobs import get_queue
from tests.fakes.demo import DELIVERED_AFTER, READ_AFTER, REPLY, REPLY_AFTER
from tests.fakes.server import serve
from tests.test_serve import LOGIN_RE, Serve, flask, wait_gone

REPO = Path(__file__).resolve().parent.parent
PACE = 0.2
DEMO_LINE_RE = re.compile(
    r"^Twilio runs in demo mode against the local fake at (http://\S+):", re.M
)


def run_worker(*queues: str) -> None:
    # A job writes in this thread's session: no read snapshot of ours may be open (SQLite).
    db.session.rollback()
    SimpleWorker([get_queue(n) for n in queues], connection=get_redis()).work(burst=True)


def start_demo(settings_file: Path, *extra: str) -> subprocess.Popen:
    """The fake run as a file, with pytest made unimportable as on a `make run` install."""
    code = (
        "import runpy, sys\n"
        "sys.modules['pytest'] = None\n"
        f"sys.argv = [{str(REPO / 'tests/fakes/demo.py')!r}, *sys.argv[1:]]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    argv = [sys.executable, "-c", code, "--config-out", str(settings_file), *extra]
    return subprocess.Popen(argv, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the demo fake exited with {proc.returncode}"
        assert time.monotonic() < deadline, "the demo fake wrote no settings"
        time.sleep(0.05)
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def demo_fake(tmp_path_factory):
    """The demo fake's settings (TWILIO_*), the fake running in its own process."""
    settings_file = tmp_path_factory.mktemp("demo") / "twilio.json"
    proc = start_demo(settings_file, "--pace", str(PACE))
    try:
        yield wait_for_file(settings_file, proc)
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
    assert not settings_file.exists(), "the fake leaves no settings behind"


@pytest.fixture
def demo_app(app, demo_fake, monkeypatch):
    """The session app on a live port, sending through the demo fake as `flask serve` sets up."""
    with serve(app) as base:
        settings = twilio_demo_env({}, demo_fake, base)
        for key, value in settings.items():
            monkeypatch.setitem(app.config, key, value)
        monkeypatch.setitem(app.config, "TWILIO_DEMO", True)
        created = []
        with app.app_context():
            first_event = db.session.scalar(sa.select(sa.func.max(WebhookEvent.id))) or 0
            yield created
            db.session.rollback()
            db.session.execute(sa.delete(WebhookEvent).where(WebhookEvent.id > first_event))
            db.session.execute(sa.delete(Contact).where(Contact.id.in_(created)))
            db.session.commit()
            db.session.remove()


def thread_of(conversation_id: int) -> list[Message]:
    db.session.expire_all()
    return db.session.scalars(
        sa.select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id)
    ).all()


def wait_for(conversation_id: int, done, timeout: float = 15) -> list[Message]:
    """Process webhooks as they come until `done(messages)`; return the thread's messages."""
    deadline = time.monotonic() + timeout
    while True:
        run_worker("webhooks")
        messages = thread_of(conversation_id)
        if done(messages):
            return messages
        if time.monotonic() > deadline:
            described = [(m.direction, m.status, m.body) for m in messages]
            pytest.fail(f"timed out; the thread holds {described}")
        time.sleep(0.05)


def start_thread(channel: str, phone: str, created: list[int]) -> Conversation:
    contact = Contact(name="Dana Demo", phone=phone)
    db.session.add(contact)
    db.session.flush()
    created.append(contact.id)
    conversation = services.open_conversation(contact, channel)
    if channel == "whatsapp":
        conversation.last_inbound_at = utcnow()  # the 24-hour window is open
    db.session.commit()
    return conversation


def send(conversation_id: int, body: str) -> int:
    db.session.rollback()
    conversation = db.session.get(Conversation, conversation_id)
    message = services.queue_message(conversation, body=body, actor=None)
    db.session.commit()
    run_worker("messaging")
    return message.id


@pytest.mark.parametrize(
    ("channel", "phone", "ticks"),
    [
        ("sms", "+14155550161", ["queued", "sent", "delivered"]),
        ("whatsapp", "+14155550162", ["queued", "sent", "delivered", "read"]),
    ],
)
def test_a_message_gets_its_ticks_then_an_answer(demo_app, demo_fake, channel, phone, ticks):
    conversation = start_thread(channel, phone, demo_app)
    sent_id = send(conversation.id, "See you at 10 tomorrow")

    messages = wait_for(conversation.id, lambda ms: any(m.direction == "inbound" for m in ms))
    sent, answer = messages
    assert sent.id == sent_id
    assert sent.sid is not None
    # The ticks came before the answer, in order, each once.
    assert sent.status == ticks[-1]
    assert [e.status for e in sent.history] == ticks
    assert all(e.applied for e in sent.history)
    assert (answer.direction, answer.body, answer.channel) == ("inbound", REPLY, channel)
    conversation = db.session.get(Conversation, conversation.id)
    assert conversation.unread_count == 1
    assert conversation.window_open()
    # The answer is no keyword: the contact is still reachable.
    assert services.opted_out(conversation.contact_id, channel) is None
    assert services.refusal(conversation) is None


def test_the_fake_never_answers_an_answer(demo_app):
    conversation = start_thread("sms", "+14155550163", demo_app)
    send(conversation.id, "How was the session?")
    wait_for(conversation.id, lambda ms: len(ms) == 2)

    # As an auto-responder would: a message right after the contact's answer.
    auto_id = send(conversation.id, "Thanks! A coach will get back to you.")
    messages = wait_for(
        conversation.id, lambda ms: any(m.id == auto_id and m.status == "delivered" for m in ms)
    )
    # Well past the time an answer would have taken: still none.
    time.sleep((REPLY_AFTER + READ_AFTER - DELIVERED_AFTER) * PACE)
    messages = wait_for(conversation.id, lambda ms: True)
    assert [(m.direction, m.body) for m in messages] == [
        ("outbound", "How was the session?"),
        ("inbound", REPLY),
        ("outbound", "Thanks! A coach will get back to you."),
    ]


def test_the_answer_is_no_keyword():
    word = REPLY.strip().upper()
    assert word not in services.OPT_OUT_WORDS | services.OPT_IN_WORDS | services.HELP_WORDS


def test_the_fake_refuses_other_credentials(demo_fake):
    url = f"{demo_fake['TWILIO_API_BASE']}/2010-04-01/Accounts/{demo_fake['TWILIO_ACCOUNT_SID']}"
    good = (demo_fake["TWILIO_ACCOUNT_SID"], demo_fake["TWILIO_AUTH_TOKEN"])
    assert requests.get(f"{url}.json", auth=good, timeout=5).status_code == 200
    bad = (demo_fake["TWILIO_ACCOUNT_SID"], "not-the-token")
    assert requests.get(f"{url}.json", auth=bad, timeout=5).status_code == 401


# --- `flask serve` ---------------------------------------------------------------------


FAKE = {
    "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
    "TWILIO_AUTH_TOKEN": "f" * 32,
    "TWILIO_API_BASE": "http://127.0.0.1:40001",
    "TWILIO_SMS_FROM": "+15005550006",
    "TWILIO_WHATSAPP_FROM": "+14155238886",
}


@pytest.mark.parametrize(
    ("sid", "demo", "wanted"),
    [
        (None, None, True),
        ("", "", True),
        (None, "1", True),
        (None, "0", False),
        ("AC1", None, False),
    ],
)
def test_demo_mode_is_on_without_an_account_unless_turned_off(sid, demo, wanted):
    environ = {} if demo is None else {"TWILIO_DEMO": demo}
    assert wants_twilio_demo({"TWILIO_ACCOUNT_SID": sid}, environ) is wanted


def test_serve_points_its_children_at_the_fake():
    env = twilio_demo_env({"PUBLIC_BASE_URL": " "}, FAKE, "http://localhost:8000")
    assert env == {**FAKE, "PUBLIC_BASE_URL": "http://localhost:8000", "TWILIO_DEMO": "1"}


def test_serve_keeps_a_public_url_and_senders_that_are_set():
    environ = {"PUBLIC_BASE_URL": "https://crm.example.com", "TWILIO_SMS_FROM": "+14155550100"}
    env = twilio_demo_env(environ, FAKE, "http://localhost:8000")
    assert env["PUBLIC_BASE_URL"] == "https://crm.example.com"
    assert env["TWILIO_SMS_FROM"] == "+14155550100"
    assert env["TWILIO_WHATSAPP_FROM"] == FAKE["TWILIO_WHATSAPP_FROM"]
    assert env["TWILIO_API_BASE"] == FAKE["TWILIO_API_BASE"]


@pytest.fixture(scope="module")
def serve_instance():
    """A migrated, seeded INSTANCE_PATH on the embedded defaults, and no Twilio account."""
    path = Path(tempfile.mkdtemp(prefix="rapport-demo-", dir="/tmp"))
    env = dict(os.environ, INSTANCE_PATH=str(path), PYTHONUNBUFFERED="1")
    for name in ("DATABASE_URL", "REDIS_URL", "TWILIO_ACCOUNT_SID", "TWILIO_DEMO"):
        env[name] = ""  # blank, not absent: a developer's .env cannot fill it in
    for command in (["db", "upgrade"], ["seed", "demo"]):
        flask(command, env)
    yield path, env
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def sign_in(browser: requests.Session, url: str, email: str, password: str) -> None:
    page = browser.get(f"{url}/login", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    answer = browser.post(
        f"{url}/login", data={"email": email, "password": password, "csrf_token": token}, timeout=10
    )
    assert answer.status_code == 200 and answer.url == f"{url}/"


def test_serve_runs_the_fake_and_the_health_card_says_so(serve_instance):
    started = Serve(*serve_instance)
    try:
        url = started.wait_until_running()
        match = DEMO_LINE_RE.search(started.output)
        assert match, started.output
        fake_url = match.group(1)
        settings = json.loads((serve_instance[0] / "twilio-demo.json").read_text())
        assert settings["TWILIO_API_BASE"] == fake_url
        logins = {role: (e, p) for role, e, p in LOGIN_RE.findall(started.output)}
        with requests.Session() as browser:
            sign_in(browser, url, *logins["staff"])
            for headers in ({}, {"HX-Request": "true"}):
                page = browser.get(f"{url}/integrations/", headers=headers, timeout=10).text
                card = re.search(r'<article[^>]*id="card-twilio".*?</article>', page, re.S)
                assert f"Demo mode: local Twilio fake at {fake_url}." in card.group(0)
                assert ("<html" in page) is not bool(headers)
        fake = [p for p in started.record_descendants() if "demo.py" in " ".join(p.cmdline())]
        assert len(fake) == 1
        started.proc.send_signal(2)  # Ctrl-C
        assert started.proc.wait(60) == 0, started.output
        assert wait_gone(fake, 5) == []
        assert not (serve_instance[0] / "twilio-demo.json").exists()
    finally:
        started.close()


def test_serve_without_demo_mode_starts_no_fake(serve_instance):
    path, env = serve_instance
    started = Serve(path, {**env, "TWILIO_DEMO": "0"})
    try:
        started.wait_until_running()
        assert "demo mode" not in started.output
        running = [" ".join(p.cmdline()) for p in started.record_descendants()]
        assert not any("demo.py" in cmd for cmd in running), running
    finally:
        started.close()


# --- the health card ----------------------------------------------------------------------


def twilio_card(client, htmx: bool) -> str:
    response = client.htmx_get("/integrations/") if htmx else client.get("/integrations/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert ("<html" in page) is not htmx
    match = re.search(r'<article[^>]*id="card-twilio".*?</article>', page, re.S)
    assert match, "no Twilio card"
    return match.group(0)


@pytest.mark.parametrize("htmx", [False, True])
def test_the_card_names_the_fake_in_demo_mode(client, login_as, monkeypatch, app, htmx):
    for key, value in {**FAKE, "TWILIO_DEMO": True}.items():
        monkeypatch.setitem(app.config, key, value)
    login_as("staff")
    card = twilio_card(client, htmx)
    assert "Demo mode: local Twilio fake at http://127.0.0.1:40001." in card
    assert "Not configured" not in card


@pytest.mark.parametrize("htmx", [False, True])
def test_the_card_says_not_configured_without_credentials(client, login_as, monkeypatch, app, htmx):
    monkeypatch.setitem(app.config, "TWILIO_ACCOUNT_SID", None)
    monkeypatch.setitem(app.config, "TWILIO_AUTH_TOKEN", None)
    monkeypatch.setitem(app.config, "TWILIO_DEMO", True)  # set, but there is no fake to name
    login_as("staff")
    card = twilio_card(client, htmx)
    assert "Not configured" in card
    assert "TWILIO_ACCOUNT_SID is not set" in card
    assert "Demo mode" not in card


@pytest.mark.parametrize("htmx", [False, True])
def test_the_card_of_a_real_account_shows_its_state(client, login_as, monkeypatch, app, htmx):
    for key, value in {**FAKE, "TWILIO_API_BASE": "https://api.twilio.com"}.items():
        monkeypatch.setitem(app.config, key, value)
    monkeypatch.setitem(app.config, "TWILIO_DEMO", False)
    login_as("staff")
    card = twilio_card(client, htmx)
    assert "Demo mode" not in card and "Not configured" not in card
    assert 'class="health-state state-ok">OK<' in card
