"""Conversations through the Twilio fake with the real SDK and the real worker: inbound
threading, sending, delivery status in any order, consent and the WhatsApp window."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
import sqlalchemy as sa
from rq import SimpleWorker

from crm.contacts.models import Contact
from crm.conversations import services
from crm.conversations.models import (
    ConsentEvent,
    Conversation,
    Message,
    OptOut,
)
from crm.database import utcnow
from crm.redis_client import get_redis
from jobs import get_queue


def run_worker(*queues: str) -> None:
    names = queues or ("webhooks", "messaging")
    SimpleWorker([get_queue(n) for n in names], connection=get_redis()).work(burst=True)


def post(client, webhook):
    response = webhook.send(client)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def send(db, conversation, body="Hello", **kwargs) -> Message:
    message = services.queue_message(conversation, body=body, actor=None, **kwargs)
    db.session.commit()
    return message


def reload(db, obj):
    db.session.expire_all()
    return db.session.get(type(obj), obj.id)


@pytest.fixture
def contact(make_contact):
    return make_contact("Ana Silva", phone="+14155550101")


@pytest.fixture
def sms(db, twilio_fake, contact):
    conversation = services.open_conversation(contact, "sms")
    db.session.commit()
    return conversation


def test_a_message_is_sent_once_and_its_ticks_follow_the_callbacks(client, db, twilio_fake, sms):
    message = send(db, sms, "See you Tuesday")
    assert message.status == "queued"
    run_worker()
    message = reload(db, message)
    [accepted] = twilio_fake.messages.values()
    assert accepted["to"] == "+14155550101"
    assert accepted["from"] == "+15005550006"
    assert accepted["body"] == "See you Tuesday"
    assert message.sid == accepted["sid"]
    run_worker()  # a second run sends nothing again
    assert len(twilio_fake.messages) == 1
    for webhook in twilio_fake.status_callback_requests(message.sid, ["sent", "delivered"]):
        post(client, webhook)
    run_worker()
    message = reload(db, message)
    assert message.status == "delivered"
    assert [e.status for e in message.history] == ["queued", "sent", "delivered"]


# --- inbound ----------------------------------------------------------------------


def inbound(client, twilio_fake, from_, body="Hi", **kwargs):
    webhook = twilio_fake.inbound_message(from_, "+15005550006", body, **kwargs)
    post(client, webhook)
    run_worker("webhooks")
    return webhook


def test_sms_and_whatsapp_from_one_number_thread_into_one_contact(client, db, twilio_fake):
    inbound(client, twilio_fake, "+14155550177", "Hello by SMS")
    inbound(client, twilio_fake, "+14155550177", "Olá", whatsapp=True, profile_name="Ana Silva")
    inbound(client, twilio_fake, "+14155550177", "And again by SMS")
    [contact] = db.session.scalars(sa.select(Contact).where(Contact.phone == "+14155550177"))
    # The name was only a number: WhatsApp's profile name replaces it.
    assert contact.name == "Ana Silva"
    conversations = db.session.scalars(
        sa.select(Conversation).where(Conversation.contact_id == contact.id)
    ).all()
    assert sorted(c.channel for c in conversations) == ["sms", "whatsapp"]
    sms = next(c for c in conversations if c.channel == "sms")
    assert sms.unread_count == 2
    assert sms.last_inbound_at is not None
    bodies = db.session.scalars(
        sa.select(Message.body).where(Message.conversation_id == sms.id).order_by(Message.id)
    ).all()
    assert bodies == ["Hello by SMS", "And again by SMS"]
    assert contact.last_contact_at is not None


def test_a_profile_name_never_replaces_a_real_name(client, db, twilio_fake, contact):
    inbound(client, twilio_fake, contact.phone, "hi", whatsapp=True, profile_name="Nickname")
    assert reload(db, contact).name == "Ana Silva"


def test_an_inbound_message_goes_to_the_owner_coach_and_keeps_its_media(
    client, db, twilio_fake, make_contact, make_user
):
    coach = make_user("coach")
    contact = make_contact("Ben", phone="+14155550188", owner_id=coach.id)
    media = [("https://api.twilio.com/media/ME1", "image/jpeg"), "https://x.test/doc.pdf"]
    inbound(
        client,
        twilio_fake,
        contact.phone,
        "",
        media=media,
        messaging_service_sid="MG" + "b" * 32,
    )
    [conversation] = db.session.scalars(
        sa.select(Conversation).where(Conversation.contact_id == contact.id)
    )
    assert conversation.assignee_id == coach.id
    assert conversation.sender == "MG" + "b" * 32
    [message] = db.session.scalars(sa.select(Message).where(Message.contact_id == contact.id))
    assert [m["url"] for m in message.media] == [
        "https://api.twilio.com/media/ME1",
        "https://x.test/doc.pdf",
    ]
    assert message.media[0]["content_type"] == "image/jpeg"


def test_a_repeated_inbound_delivery_is_recorded_once(client, db, twilio_fake):
    webhook = twilio_fake.inbound_message("+14155550199", "+15005550006", "Once")
    post(client, webhook)
    # Twilio retries with a new idempotency token: still the same MessageSid.
    again = webhook._replace(headers={**webhook.headers, "I-Twilio-Idempotency-Token": "other"})
    post(client, again)
    run_worker("webhooks")
    from crm.webhooks.models import WebhookEvent
    from crm.webhooks.services import replay_events

    # A replay runs the handler again: it must not add a second message.
    ids = db.session.scalars(sa.select(WebhookEvent.id)).all()
    replay_events(ids, actor=None)
    db.session.commit()
    run_worker("webhooks")
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Message)) == 1
    [conversation] = db.session.scalars(sa.select(Conversation))
    assert conversation.unread_count == 1


# --- status callbacks ---------------------------------------------------------------

ORDERED = ["sending", "sent", "delivered", "read"]


def test_status_callbacks_in_every_order_end_read_with_the_full_history(client, db, twilio_fake):
    contact = Contact(name="Cy", phone="+14155550142")
    db.session.add(contact)
    db.session.flush()
    conversation = services.open_conversation(contact, "whatsapp")
    conversation.last_inbound_at = utcnow()
    db.session.commit()
    for order in itertools.permutations(ORDERED):
        message = send(db, conversation, f"order {order}")
        run_worker("messaging")
        message = reload(db, message)
        webhooks = twilio_fake.status_callback_requests(message.sid, order)
        for webhook in webhooks:
            post(client, webhook)
        run_worker("webhooks")
        message = reload(db, message)
        assert message.status == "read", order
        history = [(e.status, e.applied) for e in message.history]
        # Every callback is in the history, applied only when it moved the status forward.
        assert [s for s, _ in history] == ["queued", *order]
        applied = [s for s, ok in history if ok]
        assert applied == sorted(applied, key=["queued", *ORDERED].index), order


@pytest.mark.parametrize(
    ("order", "final"),
    [
        (["sent", "failed", "delivered"], "delivered"),  # a late delivery beats a failure
        (["delivered", "undelivered"], "delivered"),  # a failure never beats a delivery
        (["undelivered", "sent"], "undelivered"),  # nor does an earlier status
        (["sent", "undelivered", "read"], "read"),
    ],
)
def test_failures_are_terminal_unless_delivery_follows(client, db, twilio_fake, sms, order, final):
    message = send(db, sms)
    run_worker("messaging")
    message = reload(db, message)
    for webhook in twilio_fake.status_callback_requests(message.sid, order, error_code=30003):
        post(client, webhook)
    run_worker("webhooks")
    message = reload(db, message)
    assert message.status == final
    if final == "undelivered":
        assert message.error_code == 30003
        assert "unreachable" in message.error_reason
    else:
        assert message.error_reason is None


def test_a_callback_before_the_send_is_recorded_waits_and_then_applies(
    client, db, twilio_fake, sms
):
    message = send(db, sms)
    run_worker("messaging")
    message = reload(db, message)
    sid = message.sid
    # As if the job had not committed yet: the callback finds no message with that SID.
    db.session.execute(sa.update(Message).where(Message.id == message.id).values(sid=None))
    db.session.commit()
    [webhook] = twilio_fake.status_callback_requests(sid, ["delivered"])
    post(client, webhook)
    run_worker("webhooks")
    from crm.webhooks.models import WebhookEvent

    [event] = db.session.scalars(sa.select(WebhookEvent).where(WebhookEvent.kind == "status"))
    assert event.status == "failed" and "no message has SID" in event.last_error
    db.session.execute(sa.update(Message).where(Message.id == message.id).values(sid=sid))
    db.session.commit()
    from crm.webhooks.services import replay_events

    replay_events([event.id], actor=None)
    db.session.commit()
    run_worker("webhooks")
    assert reload(db, message).status == "delivered"


# --- outbound failures, consent, the window -----------------------------------------


def test_21610_fails_the_message_and_opts_the_contact_out(client, db, twilio_fake, sms, contact):
    twilio_fake.fail_next(status=400, code=21610, endpoint="messages_create")
    message = send(db, sms)
    run_worker("messaging")
    message = reload(db, message)
    assert message.status == "failed"
    assert message.error_code == 21610
    assert "unsubscribed" in message.error_reason
    assert db.session.get(OptOut, services.opted_out(contact.id, "sms").id).source == "Twilio 21610"
    [event] = db.session.scalars(sa.select(ConsentEvent))
    assert (event.action, event.channel) == ("opt_out", "sms")
    # Nothing more can be sent on SMS, and the reason says why.
    with pytest.raises(services.SendRefused, match="opted out of SMS"):
        services.queue_message(reload(db, sms), body="again", actor=None)


def test_an_invalid_number_fails_with_a_readable_reason_and_no_retry(db, twilio_fake, make_contact):
    contact = make_contact("Bad", phone="+1415")
    conversation = services.open_conversation(contact, "sms")
    db.session.commit()
    message = send(db, conversation)
    run_worker("messaging")
    message = reload(db, message)
    assert (message.status, message.error_code) == ("failed", 21211)
    assert message.error_reason == "The phone number is not valid."
    assert get_queue("messaging").count == 0


def test_a_transient_failure_retries_and_then_sends_once(db, twilio_fake, sms, redis):
    twilio_fake.fail_next(status=503, endpoint="messages_create")
    message = send(db, sms)
    run_worker("messaging")
    message = reload(db, message)
    assert message.status == "queued" and message.sid is None
    assert message.error_reason.startswith("Retrying")
    # The in-flight marker stays: Twilio might have taken it before failing to answer.
    assert message.dispatch_started_at is not None
    from rq.registry import ScheduledJobRegistry

    registry = ScheduledJobRegistry(queue=get_queue("messaging"))
    [job_id] = registry.get_job_ids()
    get_queue("messaging").enqueue_job(get_queue("messaging").fetch_job(job_id))
    registry.remove(job_id)
    run_worker("messaging")
    message = reload(db, message)
    assert message.sid is not None and message.error_reason is None
    assert len(twilio_fake.messages) == 1


def test_a_send_whose_worker_died_after_twilio_accepted_it_is_not_sent_again(db, twilio_fake, sms):
    from crm.integrations import twilio

    message = send(db, sms, "Only once")
    # The dead worker's story: marker committed, Twilio accepted, the SID never recorded.
    started = utcnow()
    db.session.execute(
        sa.update(Message)
        .where(Message.id == message.id)
        .values(dispatch_started_at=started, dispatch_attempts=1)
    )
    db.session.commit()
    accepted = twilio.send_message(to="+14155550101", from_="+15005550006", body="Only once")
    run_worker("messaging")
    message = reload(db, message)
    assert message.sid == accepted["sid"]
    assert len(twilio_fake.messages) == 1
    assert twilio_fake.calls("messages_list"), "Twilio was asked before anything was resent"


def test_a_marker_with_nothing_at_twilio_is_sent_after_all(db, twilio_fake, sms):
    message = send(db, sms, "Died before the call")
    db.session.execute(
        sa.update(Message)
        .where(Message.id == message.id)
        .values(dispatch_started_at=utcnow() - timedelta(seconds=1))
    )
    db.session.commit()
    run_worker("messaging")
    assert reload(db, message).sid is not None
    assert len(twilio_fake.messages) == 1


def test_a_message_queued_before_stop_is_never_sent(client, db, twilio_fake, sms, contact):
    message = send(db, sms, "Promo")
    inbound(client, twilio_fake, contact.phone, "stop")  # any case, one word
    run_worker("messaging")
    message = reload(db, message)
    assert message.status == "canceled"
    assert "opted out" in message.error_reason
    assert twilio_fake.messages == {}
    [event] = db.session.scalars(sa.select(ConsentEvent))
    assert (event.action, event.source) == ("opt_out", "replied STOP")


def test_stop_with_other_words_is_just_a_message(client, db, twilio_fake, contact):
    inbound(client, twilio_fake, contact.phone, "Stop by at 5?")
    assert services.opted_out(contact.id, "sms") is None


def test_start_opts_back_in_and_help_gets_the_reply(client, db, twilio_fake, contact):
    inbound(client, twilio_fake, contact.phone, "QUIT")
    assert services.opted_out(contact.id, "sms") is not None
    inbound(client, twilio_fake, contact.phone, "Start")
    assert services.opted_out(contact.id, "sms") is None
    inbound(client, twilio_fake, contact.phone, "help")
    run_worker("messaging")
    [reply] = twilio_fake.messages.values()
    assert reply["to"] == contact.phone and "STOP" in reply["body"]
    actions = db.session.scalars(sa.select(ConsentEvent.action).order_by(ConsentEvent.id)).all()
    assert actions == ["opt_out", "opt_in"]


def test_whatsapp_free_text_needs_the_24_hour_window(db, twilio_fake, contact):
    from crm.conversations.models import MessageTemplate

    conversation = services.open_conversation(contact, "whatsapp")
    db.session.commit()
    with pytest.raises(services.SendRefused, match="24-hour window"):
        services.queue_message(conversation, body="Hi", actor=None)
    template = MessageTemplate(
        name="Reminder", body="Hi {{first_name}}, see you soon", content_sid="HX" + "a" * 32
    )
    db.session.add(template)
    db.session.commit()
    message = send(db, conversation, template=template)
    run_worker("messaging")
    [sent] = twilio_fake.messages.values()
    assert sent["to"] == "whatsapp:+14155550101"
    request = twilio_fake.calls("messages_create")[-1]
    assert request.form["ContentSid"] == "HX" + "a" * 32
    assert request.form["ContentVariables"] == '{"1": "Ana"}'
    assert "Body" not in request.form
    # An inbound message opens the window for 24 hours.
    conversation = reload(db, conversation)
    conversation.last_inbound_at = utcnow() - timedelta(hours=23)
    db.session.commit()
    send(db, conversation, "Free text now")
    conversation.last_inbound_at = utcnow() - timedelta(hours=25)
    db.session.commit()
    with pytest.raises(services.SendRefused):
        services.queue_message(conversation, body="Too late", actor=None)
    assert message.template_id == template.id


def test_a_message_whose_window_closed_while_queued_fails_without_a_call(db, twilio_fake, contact):
    conversation = services.open_conversation(contact, "whatsapp")
    conversation.last_inbound_at = utcnow() - timedelta(hours=23, minutes=59)
    db.session.commit()
    message = send(db, conversation, "Just in time?")
    conversation = reload(db, conversation)
    conversation.last_inbound_at = utcnow() - timedelta(hours=25)
    db.session.commit()
    run_worker("messaging")
    message = reload(db, message)
    assert (message.status, message.error_code) == ("failed", 63016)
    assert twilio_fake.messages == {}


def test_retry_sends_a_failed_message_again(db, twilio_fake, sms):
    twilio_fake.fail_next(status=400, code=21611, endpoint="messages_create")
    message = send(db, sms, "Try me")
    run_worker("messaging")
    message = reload(db, message)
    assert message.status == "failed"
    again = services.retry_message(message, actor=None)
    db.session.commit()
    run_worker("messaging")
    again = reload(db, again)
    assert again.sid is not None and again.retry_of_id == message.id
    assert [m["body"] for m in twilio_fake.messages.values()] == ["Try me"]
    with pytest.raises(services.SendRefused, match="already retried"):
        services.retry_message(reload(db, message), actor=None)


def test_send_later_waits_and_can_be_cancelled(db, twilio_fake, sms):
    later = send(db, sms, "Later", send_at=utcnow() + timedelta(hours=2))
    assert later.status == "scheduled"
    run_worker("messaging")
    assert twilio_fake.messages == {}
    services.cancel_message(reload(db, later), actor=None)
    db.session.commit()
    # Even when its time comes, a cancelled message is not sent.
    from jobs.messaging import send_message

    send_message(later.id)
    assert reload(db, later).status == "canceled"
    assert twilio_fake.messages == {}


def test_messages_and_consent_are_on_the_contact_timeline(client, db, twilio_fake, login_as):
    login_as("staff")
    inbound(client, twilio_fake, "+14155550166", "Hello there")
    inbound(client, twilio_fake, "+14155550166", "STOP")
    [contact] = db.session.scalars(sa.select(Contact).where(Contact.phone == "+14155550166"))
    page = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
    assert "SMS received" in page and "Hello there" in page
    assert "Opted out of SMS" in page and "replied STOP" in page


def test_the_sweep_requeues_a_send_whose_job_was_lost(db, twilio_fake, sms, redis):
    from jobs.messaging import SWEEP_JOB, sweep_messages

    message = send(db, sms, "Lost job")
    get_queue("messaging").empty()  # the job died with its worker
    db.session.execute(
        sa.update(Message)
        .where(Message.id == message.id)
        .values(created_at=utcnow() - timedelta(minutes=1))
    )
    db.session.commit()
    assert sweep_messages() == 1
    run_worker("messaging")
    assert reload(db, message).sid is not None
    assert sweep_messages() == 0  # nothing left to sweep; sent messages are never resent
    assert len(twilio_fake.messages) == 1
    # A message whose job is still waiting on the queue is not swept: a long campaign's
    # backlog does not grow by itself every minute.
    waiting = send(db, sms, "Still queued")
    db.session.execute(
        sa.update(Message)
        .where(Message.id == waiting.id)
        .values(created_at=utcnow() - timedelta(minutes=1))
    )
    db.session.commit()
    assert get_queue("messaging").count == 1
    assert sweep_messages() == 0
    assert get_queue("messaging").count == 1
    from rq.registry import ScheduledJobRegistry

    scheduled = ScheduledJobRegistry(queue=get_queue("messaging")).get_job_ids()
    assert [j for j in scheduled if j.startswith(SWEEP_JOB)], "the sweep schedules its next run"


def test_merging_contacts_carries_their_threads_messages_and_opt_outs(
    client, db, twilio_fake, login_as, make_contact
):
    from crm.contacts.models import ContactMerge

    login_as("staff")
    ana = make_contact("Ana", phone="+14155550111")
    dup = make_contact("Ana (2)", phone="+14155550122")
    inbound(client, twilio_fake, ana.phone, "from Ana")
    inbound(client, twilio_fake, dup.phone, "from the duplicate")
    inbound(client, twilio_fake, dup.phone, "hi", whatsapp=True)
    inbound(client, twilio_fake, dup.phone, "STOP", whatsapp=True)
    response = client.form("/contacts/merge", {"ids": [ana.id, dup.id], "survivor": str(ana.id)})
    assert response.status_code == 303
    threads = db.session.scalars(
        sa.select(Conversation).where(Conversation.contact_id == ana.id).order_by(Conversation.id)
    ).all()
    # Both SMS threads and the WhatsApp one follow; one SMS thread stays open.
    assert [(c.channel, c.status) for c in threads] == [
        ("sms", "open"),
        ("sms", "closed"),
        ("whatsapp", "open"),
    ]
    assert (
        db.session.scalar(
            sa.select(sa.func.count()).select_from(Message).where(Message.contact_id == ana.id)
        )
        == 4
    )
    assert services.opted_out(ana.id, "whatsapp") is not None  # consent is never lost
    merge = db.session.scalars(sa.select(ContactMerge)).one()
    client.form(f"/contacts/merges/{merge.id}/undo")
    db.session.expire_all()
    assert services.opted_out(dup.id, "whatsapp") is not None
    assert {c.contact_id for c in db.session.scalars(sa.select(Conversation))} == {ana.id, dup.id}


def test_a_thread_without_its_own_sender_sends_from_the_configured_number(db, twilio_fake, sms):
    sms.sender = None  # e.g. made before a number was configured
    db.session.commit()
    send(db, sms, "From the default number")
    run_worker("messaging")
    [sent] = twilio_fake.messages.values()
    assert sent["from"] == "+15005550006"
