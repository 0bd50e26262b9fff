"""The staff's bookings pages through HTTP: the list and its filters, manual booking,
rescheduling, canceling, assigning, the week calendar and utilization; coach scoping."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from crm.bookings import services
from crm.bookings.models import Booking, BookingEvent, Service
from crm.database import utcnow

MONDAY = datetime(2030, 1, 7, tzinfo=UTC)  # a Monday


def text(response) -> str:
    return response.get_data(as_text=True)


def words(page: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def fresh(db, obj):
    db.session.expire_all()
    return db.session.get(type(obj), obj.id)


def all_bookings(db) -> list[Booking]:
    db.session.expire_all()
    return list(db.session.scalars(sa.select(Booking).order_by(Booking.id)))


def row(page: str, booking) -> str:
    """The list row of `booking`."""
    match = re.search(rf'<tr id="booking-{booking.id}">(.*?)</tr>', page, re.S)
    assert match, f"booking {booking.id} is not listed"
    return words(match.group(1))


def listed(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="booking-(\d+)">', page)]


@pytest.fixture
def coach(make_user):
    return make_user("coach", name="Carla Coach", timezone="Europe/Lisbon")


@pytest.fixture
def ana(make_contact):
    return make_contact("Ana Silva", email="ana@example.com")


# --- the list -------------------------------------------------------------------------


def test_the_list_shows_bookings_in_order_as_a_page_or_as_rows(
    client, db, login_as, make_booking, coach, ana, make_contact
):
    login_as("staff")
    later = make_booking(ana, coach, start_at=MONDAY + timedelta(days=1, hours=9))
    sooner = make_booking(make_contact("Ben Ortiz"), coach, start_at=MONDAY + timedelta(hours=9))

    page = client.get("/bookings/")
    assert page.status_code == 200
    assert "<html" in text(page) and "HX-Request" in page.headers["Vary"]
    assert listed(text(page)) == [sooner.id, later.id]
    assert "Ana Silva" in row(text(page), later) and "Carla Coach" in row(text(page), later)

    rows = client.htmx_get("/bookings/?sort=-start")
    assert "<html" not in text(rows) and 'id="booking-rows"' in text(rows)
    assert listed(text(rows)) == [later.id, sooner.id]
    assert rows.headers["HX-Push-Url"] == "/bookings/?from=" + _today() + "&sort=-start"


def _today() -> str:
    return utcnow().date().isoformat()  # the staff user's timezone is UTC


def test_the_list_filters_by_coach_service_status_source_and_dates(
    client, db, login_as, make_booking, make_user, coach, ana
):
    login_as("staff")
    other = make_user("coach", name="Otto Other")
    service = Service(name="Deep dive", duration_minutes=90)
    db.session.add(service)
    db.session.commit()
    a = make_booking(ana, coach, start_at=MONDAY + timedelta(hours=9), service=service)
    b = make_booking(ana, other, start_at=MONDAY + timedelta(days=2, hours=9))
    c = make_booking(ana, False, start_at=MONDAY + timedelta(days=3, hours=9), source="calcom")
    d = make_booking(ana, coach, start_at=MONDAY + timedelta(days=4, hours=9))
    services.cancel_booking(d, actor=None, reason="ill")
    past = make_booking(ana, coach, start_at=utcnow() - timedelta(days=3))
    db.session.commit()

    def ids(query: str) -> list[int]:
        return listed(text(client.get(f"/bookings/?{query}")))

    assert ids("") == [a.id, b.id, c.id, d.id]  # opens on today onwards
    assert ids("from=") == [past.id, a.id, b.id, c.id, d.id]
    assert ids(f"coach={coach.id}") == [a.id, d.id]
    assert ids("coach=unassigned") == [c.id]
    assert ids(f"service={service.id}") == [a.id]
    assert ids("status=canceled") == [d.id]
    assert ids("status=active") == [a.id, b.id, c.id]
    assert ids("source=calcom") == [c.id]
    assert ids("from=2030-01-09&end=2030-01-10") == [b.id, c.id]
    # Filters survive in the assign form's `next`, so assigning returns to this list.
    page = text(client.get("/bookings/?coach=unassigned&status=active"))
    # The form shows the filters it applied.
    assert '<option value="unassigned" selected>' in page
    assert '<option value="active" selected>' in page
    assert (
        f'name="next" value="/bookings/?from={_today()}&amp;coach=unassigned&amp;status=active"'
        in page
    )


def test_the_list_pages_through_many_bookings(client, db, login_as, ana, coach, make_booking):
    from crm.bookings import views_staff

    login_as("staff")
    made = [make_booking(ana, coach, start_at=MONDAY + timedelta(hours=2 * i)) for i in range(3)]
    original = views_staff.PAGE_SIZE
    views_staff.PAGE_SIZE = 2
    try:
        first = text(client.get("/bookings/"))
        second = text(client.htmx_get("/bookings/?page=2"))
    finally:
        views_staff.PAGE_SIZE = original
    assert listed(first) == [made[0].id, made[1].id] and "Page 1 of 2" in first
    assert 'rel="next" href="/bookings/?from=' in first
    assert listed(second) == [made[2].id] and "Page 2 of 2" in second


def test_unassigned_bookings_are_counted_and_linked_for_staff(
    client, db, login_as, make_booking, ana
):
    login_as("staff")
    make_booking(ana, False, start_at=MONDAY, external_host="host@example.com", source="calcom")
    page = text(client.get("/bookings/"))
    assert "1 unassigned booking needs a coach" in words(page)
    assert 'href="/bookings/?from=&amp;coach=unassigned&amp;status=active"' in page
    assert "booked with host@example.com" in words(page)


def test_a_coach_is_sent_to_their_sessions_and_kept_off_staff_pages(
    client, db, login_as, make_booking, ana, coach
):
    booking = make_booking(ana, coach, start_at=MONDAY)
    login_as("coach")
    response = client.get("/bookings/")
    assert response.status_code == 302
    assert urlsplit(response.location).path in ("/bookings/mine", "/bookings/calendar")
    assert client.get("/bookings/new").status_code == 403
    assert client.get(f"/bookings/{booking.id}/edit").status_code == 403
    assert client.get("/bookings/utilization").status_code == 403
    assert client.form(f"/bookings/{booking.id}/assign", {"coach_id": coach.id}).status_code == 403
    # Another coach's session is not found at all.
    assert client.form(f"/bookings/{booking.id}/cancel", {"reason": "x"}).status_code == 404
    assert fresh(db, booking).status == "scheduled"


# --- booking ------------------------------------------------------------------------


def booking_form(contact, coach, **overrides) -> dict:
    return {
        "contact_id": contact.id,
        "coach_id": coach.id,
        "service_id": "",
        "date": "2030-01-08",
        "time": "10:30",
        "timezone": "",
        "duration": "45",
        "location": "",
        "meeting_url": "",
        **overrides,
    }


def test_the_form_opens_for_a_contact_from_its_page(client, db, login_as, ana, coach):
    login_as("staff")
    page = text(client.get(f"/bookings/new?contact_id={ana.id}&coach_id={coach.id}"))
    assert 'id="chosen-contact"' in page and "Ana Silva" in page
    assert f'name="contact_id" value="{ana.id}"' in page
    assert "<option selected>Europe/Lisbon</option>" in page  # the coach's zone


def test_the_client_is_found_by_search_with_or_without_htmx(client, db, login_as, ana):
    login_as("staff")
    page = text(client.get("/bookings/new?contact_q=Silva"))
    assert f'href="/bookings/new?contact_id={ana.id}"' in page and "<html" in page
    choices = text(client.htmx_get("/bookings/new?part=contacts&contact_q=Silva"))
    assert "<html" not in choices and choices.strip().startswith('<ul id="contact-choices"')
    assert f'href="/bookings/new?contact_id={ana.id}"' in choices


def test_choosing_a_service_fills_its_length(client, db, login_as, ana, coach):
    login_as("staff")
    service = Service(name="Long session", duration_minutes=90)
    db.session.add(service)
    db.session.commit()
    form = client.htmx_get(
        f"/bookings/new?part=form&fill=service&contact_id={ana.id}&service_id={service.id}&duration=30"
    )
    assert "<html" not in text(form) and 'id="booking-form"' in text(form)
    assert 'name="duration" type="number" min="5" max="720" step="5" value="90"' in text(form)
    # Without JavaScript, an empty length takes the service's.
    response = client.form(
        "/bookings/new", booking_form(ana, coach, service_id=service.id, duration="")
    )
    assert response.status_code == 303
    [booking] = all_bookings(db)
    assert booking.duration == timedelta(minutes=90)
    assert booking.service_id == service.id


@pytest.mark.parametrize("htmx", [False, True], ids=["browser", "htmx"])
def test_staff_book_a_session_in_the_coachs_timezone(client, db, login_as, ana, coach, htmx):
    staff = login_as("staff")
    response = client.form("/bookings/new", booking_form(ana, coach), htmx=htmx)
    [booking] = all_bookings(db)
    # 10:30 in Lisbon in January is 10:30 UTC; 45 minutes.
    assert booking.start_at == datetime(2030, 1, 8, 10, 30, tzinfo=UTC)
    assert booking.end_at == datetime(2030, 1, 8, 11, 15, tzinfo=UTC)
    assert (booking.contact_id, booking.coach_id, booking.source) == (ana.id, coach.id, "manual")
    assert (booking.status, booking.created_by_id) == ("scheduled", staff.id)
    if htmx:
        assert response.status_code == 204
        assert response.headers["HX-Redirect"].startswith("/bookings/")
    else:
        assert response.status_code == 303
    events = db.session.scalars(
        sa.select(BookingEvent.kind).where(BookingEvent.booking_id == booking.id)
    )
    assert list(events) == ["booked"]


def test_a_time_entered_in_another_timezone_is_converted(client, db, login_as, ana, coach):
    login_as("staff")
    form = booking_form(ana, coach, timezone="America/New_York", date="2030-07-01", time="09:00")
    assert client.form("/bookings/new", form).status_code == 303
    [booking] = all_bookings(db)
    assert booking.start_at == datetime(2030, 7, 1, 13, 0, tzinfo=UTC)  # EDT is UTC-4


@pytest.mark.parametrize("htmx", [False, True], ids=["browser", "htmx"])
def test_a_bad_form_shows_each_error_in_place_and_saves_nothing(client, db, login_as, ana, htmx):
    login_as("staff")
    bad = {
        "contact_id": ana.id,
        "coach_id": "",
        "date": "someday",
        "time": "",
        "timezone": "Mars/Olympus",
        "duration": "2",
        "meeting_url": "zoom",
    }
    response = client.form("/bookings/new", bad, htmx=htmx)
    assert response.status_code == 422
    page = text(response)
    assert ("<html" in page) is not htmx
    for field, message in (
        ("coach", "Choose a coach."),
        ("date", "Enter the date (YYYY-MM-DD)."),
        ("time", "Enter the time."),
        ("timezone", "Choose a timezone from the list."),
        ("duration", "Enter the length in minutes (5 to 720)."),
        ("meeting-url", "Enter a link starting with https://."),
    ):
        assert f'<p class="error" id="booking-{field}-error">{message}</p>' in page
    assert 'value="someday"' in page  # what was typed stays
    assert all_bookings(db) == []


def test_a_time_skipped_by_the_clocks_is_refused(client, db, login_as, ana, coach):
    login_as("staff")
    # Lisbon moves from 01:00 to 02:00 on 31 March 2030: 01:30 never happens.
    form = booking_form(ana, coach, date="2030-03-31", time="01:30")
    response = client.form("/bookings/new", form)
    assert response.status_code == 422
    assert "01:30 does not exist on 31 Mar 2030 in Europe/Lisbon" in text(response)
    assert all_bookings(db) == []


@pytest.mark.parametrize("htmx", [False, True], ids=["browser", "htmx"])
def test_an_overlap_with_the_coachs_session_is_refused_and_nothing_saved(
    client, db, login_as, ana, coach, make_booking, make_contact, htmx
):
    login_as("staff")
    existing = make_booking(
        make_contact("Ben Ortiz"), coach, start_at=datetime(2030, 1, 8, 10, 0, tzinfo=UTC)
    )
    response = client.form("/bookings/new", booking_form(ana, coach), htmx=htmx)
    assert response.status_code == 422
    assert (
        "Carla Coach already has a session from Tue 08 Jan 10:00 to 11:00 (Europe/Lisbon) "
        "with Ben Ortiz." in text(response)
    )
    assert [b.id for b in all_bookings(db)] == [existing.id]
    # Right after the other session ends is fine.
    assert client.form("/bookings/new", booking_form(ana, coach, time="11:00")).status_code == 303


# --- changing -----------------------------------------------------------------------


def test_the_edit_form_opens_with_the_session_in_the_coachs_timezone(
    client, db, login_as, ana, make_user, make_booking
):
    login_as("staff")
    coach = make_user("coach", timezone="America/New_York")
    booking = make_booking(ana, coach, start_at=datetime(2030, 1, 8, 15, 0, tzinfo=UTC))
    page = text(client.get(f"/bookings/{booking.id}/edit"))
    assert 'name="date" type="date" value="2030-01-08"' in page
    assert 'name="time" type="time" value="10:00"' in page
    assert "<option selected>America/New_York</option>" in page
    assert 'value="60"' in page
    assert f'action="/bookings/{booking.id}/cancel"' in page


@pytest.mark.parametrize("htmx", [False, True], ids=["browser", "htmx"])
def test_staff_reschedule_a_session(client, db, login_as, ana, coach, make_booking, htmx):
    login_as("staff")
    booking = make_booking(ana, coach, start_at=datetime(2030, 1, 8, 10, 0, tzinfo=UTC))
    form = booking_form(ana, coach, date="2030-01-09", time="14:00", duration="60")
    response = client.form(f"/bookings/{booking.id}/edit", form, htmx=htmx)
    assert response.status_code == (204 if htmx else 303)
    booking = fresh(db, booking)
    assert booking.start_at == datetime(2030, 1, 9, 14, 0, tzinfo=UTC)
    assert booking.status == "rescheduled"
    kinds = db.session.scalars(
        sa.select(BookingEvent.kind).where(BookingEvent.booking_id == booking.id)
    )
    assert list(kinds) == ["booked", "rescheduled"]


def test_a_reschedule_onto_another_session_is_refused(
    client, db, login_as, ana, coach, make_booking, make_contact
):
    login_as("staff")
    make_booking(make_contact("Ben"), coach, start_at=datetime(2030, 1, 9, 14, 0, tzinfo=UTC))
    booking = make_booking(ana, coach, start_at=datetime(2030, 1, 8, 10, 0, tzinfo=UTC))
    form = booking_form(ana, coach, date="2030-01-09", time="14:30")
    response = client.form(f"/bookings/{booking.id}/edit", form)
    assert response.status_code == 422
    assert "already has a session" in text(response)
    booking = fresh(db, booking)
    assert (booking.start_at, booking.status) == (
        datetime(2030, 1, 8, 10, 0, tzinfo=UTC),
        "scheduled",
    )


def test_changing_the_coach_checks_the_new_coachs_sessions(
    client, db, login_as, ana, coach, make_user, make_booking, make_contact
):
    login_as("staff")
    other = make_user("coach", name="Otto Other", timezone="Europe/Lisbon")
    make_booking(make_contact("Ben"), other, start_at=datetime(2030, 1, 8, 10, 0, tzinfo=UTC))
    booking = make_booking(ana, coach, start_at=datetime(2030, 1, 8, 10, 0, tzinfo=UTC))
    busy = client.form(
        f"/bookings/{booking.id}/edit", booking_form(ana, other, time="10:00", duration="60")
    )
    assert busy.status_code == 422 and "Otto Other already has a session" in text(busy)
    # Moving it an hour later frees the new coach: checked at the new time, not the old.
    moved = client.form(
        f"/bookings/{booking.id}/edit", booking_form(ana, other, time="11:00", duration="60")
    )
    assert moved.status_code == 303
    booking = fresh(db, booking)
    assert (booking.coach_id, booking.start_at) == (
        other.id,
        datetime(2030, 1, 8, 11, 0, tzinfo=UTC),
    )


def test_a_provider_booking_keeps_its_time_but_can_change_coach(
    client, db, login_as, ana, coach, make_booking
):
    login_as("staff")
    booking = make_booking(
        ana,
        False,
        start_at=datetime(2030, 1, 8, 10, 0, tzinfo=UTC),
        source="calcom",
        external_id="uid-1",
        reschedule_url="https://cal.example.com/reschedule/uid-1",
    )
    moved = client.form(
        f"/bookings/{booking.id}/edit", booking_form(ana, coach, time="12:00", duration="60")
    )
    assert moved.status_code == 422
    assert (
        "booked through Cal.com: reschedule it there (https://cal.example.com/reschedule/uid-1)"
        in text(moved)
    )
    same_time = booking_form(ana, coach, time="10:00", duration="60", location="Room 2")
    assert client.form(f"/bookings/{booking.id}/edit", same_time).status_code == 303
    booking = fresh(db, booking)
    assert (booking.coach_id, booking.location, booking.status) == (coach.id, "Room 2", "scheduled")


# --- canceling ----------------------------------------------------------------------


@pytest.mark.parametrize("htmx", [False, True], ids=["browser", "htmx"])
def test_staff_cancel_a_session_with_a_reason(client, db, login_as, ana, coach, make_booking, htmx):
    staff = login_as("staff", name="Sam Staff")
    booking = make_booking(ana, coach, start_at=MONDAY)
    response = client.form(
        f"/bookings/{booking.id}/cancel",
        {"reason": "Coach is ill", "next": "/bookings/?from="},
        htmx=htmx,
    )
    if htmx:
        assert (response.status_code, response.headers["HX-Redirect"]) == (204, "/bookings/?from=")
    else:
        assert (response.status_code, response.location) == (303, "/bookings/?from=")
    booking = fresh(db, booking)
    assert booking.status == "canceled"
    assert (booking.cancellation_reason, booking.canceled_by) == ("Coach is ill", "Sam Staff")
    event = db.session.scalars(
        sa.select(BookingEvent).where(
            BookingEvent.booking_id == booking.id, BookingEvent.kind == "canceled"
        )
    ).one()
    assert event.actor_id == staff.id
    # Again: nothing more happens.
    client.form(f"/bookings/{booking.id}/cancel", {"reason": "twice"})
    assert fresh(db, booking).cancellation_reason == "Coach is ill"


def test_a_session_that_took_place_cannot_be_canceled(
    client, db, login_as, ana, coach, make_booking
):
    login_as("staff")
    booking = make_booking(ana, coach, start_at=utcnow() - timedelta(hours=3))
    services.set_outcome(booking, "completed", actor=None)
    db.session.commit()
    response = client.form(f"/bookings/{booking.id}/cancel", {"reason": "late"})
    assert response.status_code == 303
    page = text(client.get(response.location, follow_redirects=True))
    assert "Not canceled: A session that already took place cannot be canceled." in page
    assert fresh(db, booking).status == "completed"


def test_a_coach_may_cancel_their_own_session(client, db, login_as, ana, make_booking):
    me = login_as("coach")
    booking = make_booking(ana, me, start_at=MONDAY)
    assert client.form(f"/bookings/{booking.id}/cancel", {"reason": "away"}).status_code == 303
    assert fresh(db, booking).status == "canceled"


# --- assigning ----------------------------------------------------------------------


def test_staff_assign_an_unassigned_booking(client, db, login_as, ana, coach, make_booking):
    login_as("staff")
    booking = make_booking(ana, False, start_at=MONDAY, source="calcom", external_host="host@x.io")
    back = "/bookings/?from=&coach=unassigned"
    response = client.form(f"/bookings/{booking.id}/assign", {"coach_id": coach.id, "next": back})
    assert (response.status_code, response.location) == (303, back)
    assert fresh(db, booking).coach_id == coach.id
    kinds = db.session.scalars(
        sa.select(BookingEvent.kind).where(BookingEvent.booking_id == booking.id)
    )
    assert list(kinds) == ["booked", "assigned"]


def test_staff_assign_with_htmx_gets_the_rows_back(
    client, db, login_as, ana, coach, make_booking, make_contact
):
    login_as("staff")
    first = make_booking(ana, False, start_at=MONDAY)
    second = make_booking(make_contact("Ben"), False, start_at=MONDAY + timedelta(hours=3))
    back = "/bookings/?from=&coach=unassigned"
    response = client.form(
        f"/bookings/{first.id}/assign", {"coach_id": coach.id, "next": back}, htmx=True
    )
    assert response.status_code == 200
    page = text(response)
    assert "<html" not in page and page.strip().startswith('<div id="booking-rows">')
    assert listed(page) == [second.id]  # the list it came from: still unassigned ones
    assert "1 unassigned booking needs a coach" in words(page)


def test_assigning_to_a_busy_coach_is_refused_in_the_row(
    client, db, login_as, ana, coach, make_booking, make_contact
):
    login_as("staff")
    make_booking(make_contact("Ben"), coach, start_at=MONDAY)
    booking = make_booking(ana, False, start_at=MONDAY + timedelta(minutes=30))
    response = client.form(
        f"/bookings/{booking.id}/assign",
        {"coach_id": coach.id, "next": "/bookings/?from="},
        htmx=True,
    )
    assert response.status_code == 422
    assert "Carla Coach already has a session" in row(text(response), booking)
    assert fresh(db, booking).coach_id is None
    not_a_coach = client.form(f"/bookings/{booking.id}/assign", {"coach_id": "999999"})
    assert not_a_coach.status_code == 303
    assert fresh(db, booking).coach_id is None


# --- the calendar -------------------------------------------------------------------


def slot(page: str, day: str, hour: int) -> str:
    match = re.search(rf'<td id="slot-{day}-{hour:02d}">(.*?)</td>', page, re.S)
    assert match, f"no slot {day} {hour}"
    return words(match.group(1))


def test_the_calendar_puts_a_session_on_the_viewers_day_and_hour(
    client, db, login_as, ana, coach, make_booking
):
    login_as("staff", timezone="America/New_York")
    # Wed 9 Jan 2030 03:30 UTC is Tue 8 Jan 22:30 in New York.
    make_booking(ana, coach, start_at=datetime(2030, 1, 9, 3, 30, tzinfo=UTC))
    page = text(client.get("/bookings/calendar?week=2030-01-10"))
    assert "Week of Mon 7 Jan 2030" in page
    assert "22:30–23:30 Ana Silva" in slot(page, "2030-01-08", 22)
    assert page.count("Ana Silva") == 1
    assert "Times in America/New_York" in page
    assert 'href="/bookings/calendar?week=2029-12-31"' in page
    assert 'href="/bookings/calendar?week=2030-01-14"' in page


def test_the_calendar_moves_by_week_with_htmx_and_filters_by_coach(
    client, db, login_as, ana, coach, make_user, make_booking, make_contact
):
    login_as("staff")
    other = make_user("coach", name="Otto Other")
    make_booking(ana, coach, start_at=datetime(2030, 1, 14, 9, 0, tzinfo=UTC))
    make_booking(make_contact("Ben Ortiz"), other, start_at=datetime(2030, 1, 15, 9, 0, tzinfo=UTC))
    response = client.htmx_get(f"/bookings/calendar?week=2030-01-14&coach={other.id}")
    page = text(response)
    assert "<html" not in page and page.strip().startswith('<div id="calendar">')
    assert response.headers["HX-Push-Url"] == f"/bookings/calendar?week=2030-01-14&coach={other.id}"
    assert "Ben Ortiz" in slot(page, "2030-01-15", 9)
    assert "Ana Silva" not in page
    assert f'href="/bookings/calendar?week=2030-01-21&amp;coach={other.id}"' in page


def test_a_coach_sees_only_their_own_sessions_on_the_calendar(
    client, db, login_as, ana, coach, make_booking, make_contact
):
    me = login_as("coach")
    make_booking(ana, coach, start_at=datetime(2030, 1, 8, 9, 0, tzinfo=UTC))
    make_booking(make_contact("Mine Client"), me, start_at=datetime(2030, 1, 8, 11, 0, tzinfo=UTC))
    # Asking for another coach changes nothing: a coach's calendar is their own.
    page = text(client.get(f"/bookings/calendar?week=2030-01-07&coach={coach.id}"))
    assert "Mine Client" in slot(page, "2030-01-08", 11)
    assert "Ana Silva" not in page


def test_canceled_sessions_are_left_off_the_calendar(
    client, db, login_as, ana, coach, make_booking
):
    login_as("staff")
    booking = make_booking(ana, coach, start_at=datetime(2030, 1, 8, 9, 0, tzinfo=UTC))
    services.cancel_booking(booking, actor=None)
    db.session.commit()
    assert "Ana Silva" not in text(client.get("/bookings/calendar?week=2030-01-07"))


# --- utilization --------------------------------------------------------------------


def usage(page: str, key) -> list[str]:
    match = re.search(rf'<tr id="utilization-{key}">(.*?)</tr>', page, re.S)
    assert match, f"no row {key}"
    return re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", match.group(1))


@pytest.mark.parametrize("htmx", [False, True], ids=["browser", "htmx"])
def test_utilization_counts_sessions_hours_and_outcomes_per_coach(
    client, db, login_as, ana, coach, make_user, make_booking, htmx
):
    login_as("staff")
    idle = make_user("coach", name="Ida Idle")
    week = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
    make_booking(ana, coach, start_at=week, minutes=60)
    make_booking(ana, coach, start_at=week + timedelta(days=1), minutes=90)
    canceled = make_booking(ana, coach, start_at=week + timedelta(days=2), minutes=60)
    services.cancel_booking(canceled, actor=None)
    make_booking(ana, False, start_at=week + timedelta(days=3), minutes=30)
    make_booking(ana, coach, start_at=week + timedelta(days=7), minutes=60)  # next week
    # Outcomes need a start in the past.
    done = make_booking(ana, coach, start_at=utcnow() - timedelta(days=2), minutes=60)
    missed = make_booking(ana, coach, start_at=utcnow() - timedelta(days=1), minutes=60)
    services.set_outcome(done, "completed", actor=None)
    services.set_outcome(missed, "no_show", actor=None)
    db.session.commit()

    url = "/bookings/utilization?from=2030-01-07&to=2030-01-13"
    response = client.htmx_get(url) if htmx else client.get(url)
    page = text(response)
    assert ("<html" in page) is not htmx
    # Sessions, hours, completed, no-shows, canceled, share of 40 h.
    assert usage(page, coach.id)[1:] == ["2", "2.5", "0", "0", "1", "6%"]
    assert usage(page, idle.id)[1:] == ["0", "0.0", "0", "0", "0", "0%"]
    assert usage(page, "unassigned")[1:] == ["1", "0.5", "0", "0", "0", "—"]
    assert "7 days" in page and "40 h × 7 days ÷ 7 = 40.0 h per coach" in words(page)

    start = (utcnow() - timedelta(days=3)).date().isoformat()
    end = utcnow().date().isoformat()
    page = text(client.get(f"/bookings/utilization?from={start}&to={end}"))
    assert usage(page, coach.id)[1:5] == ["2", "2.0", "1", "1"]


def test_utilization_defaults_to_this_week(client, db, login_as):
    login_as("staff")
    page = text(client.get("/bookings/utilization"))
    today = utcnow().date()
    monday = today - timedelta(days=today.weekday())
    assert f'name="from" value="{monday.isoformat()}"' in page
    assert f'name="to" value="{(monday + timedelta(days=6)).isoformat()}"' in page


# --- canceling a Calendly booking (crm.bookings.calendly tells Calendly first) -------------


def calendly_booking(db, coach, contact, fake, *, start_at):
    """A Calendly booking of `coach`, whose account (the fake's) is connected."""
    from crm.bookings import tokens
    from crm.bookings.models import CalendlyConnection, CoachProfile

    granted = fake.issue_token()
    db.session.add(CoachProfile(user_id=coach.id, calendly_user_uri=fake.user_uri))
    db.session.add(
        CalendlyConnection(
            coach_id=coach.id,
            user_uri=fake.user_uri,
            organization_uri=fake.organization_uri,
            access_token=tokens.encrypt(granted["access_token"]),
            refresh_token=tokens.encrypt(granted["refresh_token"]),
            expires_at=utcnow() + timedelta(hours=2),
            state="connected",
        )
    )
    db.session.commit()
    event = fake.add_scheduled_event(start_time=start_at)
    booking = services.create_booking(
        contact,
        coach=coach,
        start_at=start_at,
        end_at=start_at + timedelta(minutes=30),
        actor=None,
        source="calendly",
        external_id=f"{event['uri']}/invitees/x",
        external_event_id=event["uri"],
    )
    db.session.commit()
    return booking, event["uri"].rsplit("/", 1)[-1]


needs_calendly = pytest.mark.skipif(
    not hasattr(__import__("crm.bookings.calendly").bookings.calendly, "cancel_event"),
    reason="crm.bookings.calendly.cancel_event is not there yet",
)


@needs_calendly
@pytest.mark.parametrize("htmx", [False, True], ids=["browser", "htmx"])
def test_canceling_a_calendly_booking_cancels_it_in_calendly_first(
    client, db, login_as, ana, coach, calendly_fake, htmx
):
    login_as("staff")
    booking, uuid = calendly_booking(db, coach, ana, calendly_fake, start_at=MONDAY)
    response = client.form(
        f"/bookings/{booking.id}/cancel",
        {"reason": "Coach is ill", "next": "/bookings/"},
        htmx=htmx,
    )
    assert response.status_code == (204 if htmx else 303)
    [call] = calendly_fake.calls("cancellation")
    assert call.json == {"reason": "Coach is ill"}
    assert calendly_fake.events[uuid]["status"] == "canceled"
    assert fresh(db, booking).status == "canceled"
    assert "Calendly was told." in text(client.get("/bookings/"))


@needs_calendly
def test_a_cancellation_calendly_refuses_leaves_the_booking_as_it_is(
    client, db, login_as, ana, coach, calendly_fake
):
    login_as("staff")
    past = utcnow() - timedelta(hours=3)
    booking, uuid = calendly_booking(db, coach, ana, calendly_fake, start_at=past)
    response = client.form(
        f"/bookings/{booking.id}/cancel", {"reason": "late", "next": "/bookings/"}
    )
    assert response.status_code == 303
    page = words(text(client.get("/bookings/")))
    assert "Not canceled:" in page and "Event in the past" in page
    assert fresh(db, booking).status == "scheduled"
    assert calendly_fake.events[uuid]["status"] == "active"
