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
    MessageStatusEvent,
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
