"""The bookings core: one booking per session whichever way it arrives, overlaps, contacts
linked from invitees, the history on the contact's timeline, and merges carrying bookings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from crm.bookings import services
from crm.bookings.models import Booking, BookingEvent, Service
from crm.contacts.merge import merge_contacts, undo_merge
from crm.contacts.models import Contact

START = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)


def test_a_manual_booking_overlapping_the_coach_is_refused_and_back_to_back_is_fine(
    db, make_booking, make_contact, make_user
):
    coach = make_user("coach", name="Casey Coach")
    make_booking(make_contact("Ana"), coach, start_at=START, minutes=60)
    other = make_contact("Ben")

    with pytest.raises(services.BookingError, match=r"Casey Coach already has a session .* Ana"):
        services.create_booking(
            other,
            coach=coach,
            start_at=START + timedelta(minutes=30),
            end_at=START + timedelta(minutes=90),
            actor=None,
        )
    # Touching ends do not overlap; another coach's time is free.
    services.create_booking(
        other,
        coach=coach,
        start_at=START + timedelta(hours=1),
        end_at=START + timedelta(hours=2),
        actor=None,
    )
    services.create_booking(
        other,
        coach=make_user("coach"),
        start_at=START,
        end_at=START + timedelta(hours=1),
        actor=None,
    )
    db.session.commit()
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Booking)) == 3


def test_a_canceled_session_frees_the_slot(db, make_booking, make_contact, make_user):
    coach = make_user("coach")
    booking = make_booking(coach=coach, start_at=START)
    services.cancel_booking(booking, actor=None, reason="Client is ill")
    assert booking.status == "canceled" and booking.cancellation_reason == "Client is ill"
    assert services.cancel_booking(booking, actor=None) is False  # idempotent
    services.create_booking(
        make_contact(), coach=coach, start_at=START, end_at=START + timedelta(hours=1), actor=None
    )


def test_a_provider_booking_applies_once_and_a_reschedule_moves_it_in_place(
    db, make_contact, make_user
):
    coach = make_user("coach")
    contact = make_contact("Ana", email="ana@example.com")
    fields = dict(contact=contact, coach=coach, start_at=START, end_at=START + timedelta(hours=1))

    first = services.apply_external_booking("calendly", "inv-1", **fields)
    again = services.apply_external_booking("calendly", "inv-1", **fields)
    assert first.change == "created" and again.booking.id == first.booking.id
    assert again.change != "created"

    later = START + timedelta(days=2)
    moved = services.apply_external_booking(
        "calendly",
        "inv-2",
        previous_external_id="inv-1",
        **{**fields, "start_at": later, "end_at": later + timedelta(hours=1)},
    )
    db.session.commit()
    assert moved.change == "rescheduled" and moved.booking.id == first.booking.id
    booking = db.session.get(Booking, first.booking.id)
    assert (booking.external_id, booking.status, booking.start_at) == (
        "inv-2",
        "rescheduled",
        later,
    )
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Booking)) == 1
    kinds = db.session.scalars(
        sa.select(BookingEvent.kind)
        .where(BookingEvent.booking_id == booking.id)
        .order_by(BookingEvent.id)
    ).all()
    assert kinds == ["booked", "rescheduled"]


def test_invitees_link_to_contacts_by_email_then_phone_or_become_new_contacts(
    app, db, make_contact
):
    by_email = make_contact("Ana", email="ana@example.com", phone="+14155550100")
    by_phone = make_contact("Ben", phone="+14155550111")

    assert services.link_contact(email="ANA@example.com", phone=None, name="A").id == by_email.id
    found = services.link_contact(email="ben@example.com", phone="(415) 555-0111", name="B")
    assert found.id == by_phone.id and found.email == "ben@example.com"  # fills the gap

    new = services.link_contact(
        email="cara@example.com", phone="+44 7911 123456", name="Cara", timezone="Europe/London"
    )
    assert (new.name, new.phone, new.timezone) == ("Cara", "+447911123456", "Europe/London")
    with pytest.raises(services.BookingError, match="neither an email address nor a phone"):
        services.link_contact(email="not an email", phone="12", name="Nobody")


def test_a_sessions_history_is_on_the_contacts_timeline(
    client, db, login_as, make_booking, make_contact, make_user
):
    login_as("staff")
    coach = make_user("coach", name="Casey Coach")
    contact = make_contact("Ana", timezone="Europe/London")
    booking = make_booking(contact, coach, start_at=START)
    services.reschedule_booking(
        booking,
        start_at=START + timedelta(days=1),
        end_at=START + timedelta(days=1, hours=1),
        actor=None,
    )
    services.cancel_booking(booking, actor=None, reason="Moving abroad")
    db.session.commit()

    page = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
    assert "Session booked: Session with Casey Coach, Mon 4 Mar 2030, 10:00 (Europe/London)" in page
    assert "Session rescheduled to Tue 5 Mar 2030, 10:00 (Europe/London)" in page
    assert "Session canceled: Session with Casey Coach" in page
    assert "Moving abroad" in page


def test_the_contact_page_reads_its_sessions_history_in_a_fixed_number_of_queries(
    client, db, login_as, make_booking, make_contact, make_user
):
    login_as("staff")
    contact = make_contact("Ana", timezone="Europe/London")
    url = f"/contacts/{contact.id}"  # read now: after a commit it would cost a query
    made = []

    def add(count: int) -> None:
        for _ in range(count):
            n = len(made)
            coach = make_user("coach", name=f"Coach {n}")
            service = Service(name=f"Service {n}", duration_minutes=60)
            db.session.add(service)
            booking = make_booking(
                contact, coach, start_at=START + timedelta(days=n), service=service
            )
            services.add_session_note(booking, f"Note {n}", actor=coach)
            made.append(booking)
        db.session.commit()

    def statements() -> tuple[int, str]:
        seen = []

        def record(conn, cursor, statement, parameters, context, executemany):
            seen.append(statement)

        sa.event.listen(db.engine, "before_cursor_execute", record)
        try:
            page = client.get(url).get_data(as_text=True)
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", record)
        return len(seen), page

    add(1)
    client.get(url)  # caches of the top bar filled from here on
    few, _ = statements()
    add(5)
    client.get(url)  # new users (the coaches) made the signed-in user's copy stale
    many, page = statements()
    assert many == few
    for n in range(6):
        assert f"Session booked: Service {n} with Coach {n}" in page
        assert f"Session note: Service {n} with Coach {n}" in page


def test_merging_contacts_carries_their_bookings_and_undo_brings_them_back(
    db, make_booking, make_contact, make_user
):
    staff = make_user("staff")
    survivor = make_contact("Ana Silva", email="ana@example.com")
    duplicate = make_contact("Ana S.", phone="+14155550100")
    booking = make_booking(duplicate, start_at=START)

    merge = merge_contacts(survivor, duplicate, {}, actor=staff)
    db.session.commit()
    assert db.session.get(Booking, booking.id).contact_id == survivor.id
    events = db.session.scalars(
        sa.select(BookingEvent).where(BookingEvent.booking_id == booking.id)
    ).all()
    assert {e.contact_id for e in events} == {survivor.id}

    undo_merge(merge, actor=staff)
    db.session.commit()
    assert db.session.get(Booking, booking.id).contact_id == duplicate.id
    assert db.session.get(Contact, duplicate.id).deleted_at is None


def test_a_client_without_a_coach_becomes_the_booked_coachs_and_sees_their_page(
    client, db, login_as, make_booking, make_contact, make_user
):
    coach = login_as("coach")
    other_coach = make_user("coach")
    unowned = make_contact("Dana")
    owned = make_contact("Eli", owner_id=other_coach.id)
    make_booking(unowned, coach, start_at=START)
    make_booking(owned, coach, start_at=START + timedelta(hours=2))

    assert db.session.get(Contact, unowned.id).owner_id == coach.id
    assert db.session.get(Contact, owned.id).owner_id == other_coach.id  # never taken over
    assert client.get(f"/contacts/{unowned.id}").status_code == 200
    assert client.get(f"/contacts/{owned.id}").status_code == 404
