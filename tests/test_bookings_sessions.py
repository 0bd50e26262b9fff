"""A coach's sessions through HTTP: "My sessions" (tabs, filters, sort, pages, details), a
session's page, outcomes, session notes, the contact's timeline and coach scoping by URL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from crm.bookings import services
from crm.bookings.models import BookingEvent, BookingStep, SessionNote
from crm.contacts.models import Note
from crm.conversations.models import Message
from crm.conversations.services import open_conversation
from crm.database import utcnow

ROW_RE = re.compile(r'<tbody class="session" id="booking-(\d+)">')


def text(response) -> str:
    return response.get_data(as_text=True)


def words(page: str) -> str:
    """The page as a person reads it: tags dropped, whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def row_ids(page: str) -> list[int]:
    return [int(i) for i in ROW_RE.findall(page)]


def row_of(page: str, booking) -> str:
    """The markup of one session's row (its <tbody>)."""
    start = page.index(f'<tbody class="session" id="booking-{booking.id}">')
    return page[start : page.index("</tbody>", start)]


def unescape(url: str) -> str:
    return url.replace("&amp;", "&")


def hours_from_now(hours: float) -> datetime:
    return (utcnow() + timedelta(hours=hours)).replace(second=0, microsecond=0)


def fresh(db, obj):
    db.session.expire_all()
    return db.session.get(type(obj), obj.id)


@pytest.fixture
def coach(login_as):
    return login_as("coach", name="Carla Coach")


@pytest.fixture
def book(make_booking, make_contact):
    """Book a session `hours` from now for a new client (or `contact`) with `coach`."""

    def book(coach, hours: float | None, name: str = "Client", *, contact=None, at=None, **fields):
        contact = contact or make_contact(name, owner_id=fields.pop("owner_id", coach.id))
        return make_booking(contact, coach, start_at=at or hours_from_now(hours), **fields)

    return book


# --- My sessions --------------------------------------------------------------------


def test_upcoming_soonest_first_past_latest_first_and_never_another_coachs(
    client, coach, make_user, book
):
    other = make_user("coach")
    later = book(coach, 72, "Later Client")
    soon = book(coach, 3, "Soon Client")
    running = book(coach, -0.5, "Running Client")  # started, not yet over: still upcoming
    old = book(coach, -72, "Old Client")
    recent = book(coach, -24, "Recent Client")
    theirs = book(other, 5, "Their Client")
    their_past = book(other, -5, "Their Past Client")

    page = text(client.get("/bookings/mine"))
    assert row_ids(page) == [running.id, soon.id, later.id]
    assert 'aria-current="page"><strong>Upcoming' in page

    page = text(client.get("/bookings/mine?tab=past"))
    assert row_ids(page) == [recent.id, old.id]
    assert 'aria-current="page"><strong>Past' in page
    for url in ("/bookings/mine", "/bookings/mine?tab=past", f"/bookings/mine?coach={other.id}"):
        page = text(client.get(url))
        assert theirs.id not in row_ids(page) and their_past.id not in row_ids(page)
        assert "Their Client" not in page and "Their Past Client" not in page
    # A coach has no coach filter to choose from.
    assert 'name="coach"' not in text(client.get("/bookings/mine"))


def test_a_tab_or_filter_over_htmx_swaps_the_list_and_pushes_a_clean_url(client, coach, book):
    upcoming = book(coach, 5, "Ahead")
    past = book(coach, -5, "Behind")
    response = client.htmx_get("/bookings/mine?tab=past&status=&from=&to=&sort=")
    assert response.status_code == 200
    body = text(response)
    assert "<html" not in body and body.lstrip().startswith('<div id="sessions"')
    assert row_ids(body) == [past.id]
    assert response.headers["HX-Push-Url"] == "/bookings/mine?tab=past"
    assert "HX-Request" in response.headers["Vary"]
    full = client.get("/bookings/mine")
    assert "<html" in text(full) and row_ids(text(full)) == [upcoming.id]


def test_status_filter_takes_any_of_the_five(client, coach, book, db):
    scheduled = book(coach, 10, "S")
    canceled = book(coach, 30, "C")
    services.cancel_booking(canceled, actor=coach, reason="Ill")
    moved = book(coach, 50, "R")
    services.reschedule_booking(
        moved,
        start_at=moved.start_at + timedelta(hours=1),
        end_at=moved.end_at + timedelta(hours=1),
        actor=coach,
    )
    done = book(coach, -30, "D")
    services.set_outcome(done, "completed", actor=coach)
    missed = book(coach, -50, "N")
    services.set_outcome(missed, "no_show", actor=coach)
    db.session.commit()

    def ids(query):
        return row_ids(text(client.get(f"/bookings/mine?{query}")))

    assert ids("status=scheduled") == [scheduled.id]
    assert ids("status=canceled") == [canceled.id]
    assert ids("status=rescheduled&status=scheduled") == [scheduled.id, moved.id]
    assert ids("tab=past&status=completed") == [done.id]
    assert ids("tab=past&status=no_show") == [missed.id]
    assert ids("tab=past&status=no_show&status=completed") == [done.id, missed.id]
    assert ids("status=nonsense") == [scheduled.id, canceled.id, moved.id]
    page = text(client.get("/bookings/mine?status=completed"))
    assert "No sessions match." in page


def test_dates_are_days_in_the_readers_timezone(client, login_as, book):
    coach = login_as("coach", timezone="America/New_York")
    day = (utcnow() + timedelta(days=10)).date()
    new_york = ZoneInfo("America/New_York")
    # 23:30 in New York is already the next day in UTC.
    late = datetime.combine(day, time(23, 30), tzinfo=new_york).astimezone(UTC)
    assert late.date() != day
    late_booking = book(coach, None, "Late", at=late)
    next_day = book(coach, None, "Next Day", at=late + timedelta(hours=12))

    def ids(query):
        return row_ids(text(client.get(f"/bookings/mine?{query}")))

    d, d1 = day.isoformat(), (day + timedelta(days=1)).isoformat()
    assert ids(f"from={d}&to={d}") == [late_booking.id]
    assert ids(f"from={d1}") == [next_day.id]
    assert ids(f"to={d}") == [late_booking.id]
    assert ids(f"from={d}&to={d1}") == [late_booking.id, next_day.id]
    # The row shows the time as the reader reads it.
    page = text(client.get(f"/bookings/mine?from={d}&to={d}"))
    assert late.astimezone(new_york).strftime("%a %d %b %Y, 23:30") in page

    page = text(client.get("/bookings/mine?from=31/12/2030"))
    assert "“31/12/2030” is not a date (YYYY-MM-DD); it was ignored." in page
    assert row_ids(page) == [late_booking.id, next_day.id]
    page = text(client.get(f"/bookings/mine?from={d1}&to={d}"))
    assert "The end date is before the start date" in page
    assert row_ids(page) == [late_booking.id, next_day.id]


def test_sort_overrides_each_tabs_default(client, coach, book):
    first, second = book(coach, 5, "A"), book(coach, 50, "B")
    gone, older = book(coach, -5, "C"), book(coach, -50, "D")
    assert row_ids(text(client.get("/bookings/mine?sort=desc"))) == [second.id, first.id]
    assert row_ids(text(client.get("/bookings/mine?sort=asc"))) == [first.id, second.id]
    assert row_ids(text(client.get("/bookings/mine?tab=past&sort=asc"))) == [older.id, gone.id]
    assert row_ids(text(client.get("/bookings/mine?tab=past"))) == [gone.id, older.id]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pages_of_twenty_by_load_more_and_by_plain_link(client, coach, book, order):
    contact = None
    bookings = []
    for i in range(45):
        # Two at the same moment now and then: the page marker breaks ties by id.
        hours = 2 + (i // 2) * 3
        booking = book(coach, hours, "Many", contact=contact, check_overlap=False)
        contact = booking.contact
        bookings.append(booking)
    expected = sorted(bookings, key=lambda b: (b.start_at, b.id), reverse=order == "desc")
    expected = [b.id for b in expected]

    page = text(client.get(f"/bookings/mine?sort={order}&status=scheduled"))
    assert row_ids(page) == expected[:20]
    next_url = unescape(re.search(r'id="sessions-more".*?href="([^"]+)"', page, re.S).group(1))
    assert f"sort={order}" in next_url and "status=scheduled" in next_url

    # htmx: only the next rows and the next "load more", to replace the old one.
    more = client.htmx_get(next_url)
    body = text(more)
    assert "<html" not in body and "<thead" not in body
    assert row_ids(body) == expected[20:40]
    last_url = unescape(re.search(r'id="sessions-more".*?href="([^"]+)"', body, re.S).group(1))
    body = text(client.htmx_get(last_url))
    assert row_ids(body) == expected[40:]
    assert "sessions-more" not in body

    # Without JavaScript the same link is a page of its own.
    page = text(client.get(next_url))
    assert "<html" in page and row_ids(page) == expected[20:40]
    assert "Back to the first page" in page
    assert client.get("/bookings/mine?after=nonsense").status_code == 400


def _message(contact, body, *, minutes_ago, direction="inbound", db):
    conversation = open_conversation(contact, "sms")
    db.session.flush()
    message = Message(
        conversation_id=conversation.id,
        contact_id=contact.id,
        direction=direction,
        channel="sms",
        body=body,
        status="received" if direction == "inbound" else "delivered",
        created_at=utcnow() - timedelta(minutes=minutes_ago),
    )
    db.session.add(message)
    return message


def _note(contact, author, body, *, minutes_ago, db):
    note = Note(
        contact_id=contact.id,
        author_id=author.id,
        body=body,
        created_at=utcnow() - timedelta(minutes=minutes_ago),
    )
    db.session.add(note)
    return note


def test_a_row_shows_client_payment_meeting_link_and_recent_messages_and_notes(
    client, coach, book, db
):
    session = book(
        coach, 24, "Ana Silva", meeting_url="https://zoom.example.com/j/123", payment_status="paid"
    )
    plain = book(coach, 48, "Ben Ortiz", location="Room 4")
    sneaky = book(coach, 72, "Cy Trick", meeting_url="javascript:alert(1)")
    ana = session.contact
    for i, body in enumerate(["first hello", "second", "third", "fourth and newest"]):
        _message(ana, body, minutes_ago=100 - i, db=db)
    for i, body in enumerate(["old note", "note two", "note three", "newest note"]):
        _note(ana, coach, body, minutes_ago=100 - i, db=db)
    services.add_session_note(session, "Bring the workbook", actor=coach)
    db.session.commit()

    page = text(client.get("/bookings/mine"))
    row = row_of(page, session)
    assert f'<a href="/contacts/{ana.id}">Ana Silva</a>' in row
    assert '<a href="https://zoom.example.com/j/123" target="_blank" rel="noopener">' in row
    assert '<td class="session-payment">Paid</td>' in row
    assert "Scheduled" in row
    # The last three messages and notes, newest first, and this session's note.
    shown = words(row)
    assert shown.index("fourth and newest") < shown.index("third") < shown.index("second")
    assert "first hello" not in shown
    assert shown.index("newest note") < shown.index("note three") < shown.index("note two")
    assert "old note" not in shown
    assert "This session" in shown and "Bring the workbook" in shown

    other = row_of(page, plain)
    assert '<td class="session-payment">—</td>' in other and "Room 4" in other
    assert "No messages yet." in other and "No notes yet." in other
    assert '<td class="session-meeting">—</td>' in row_of(page, sneaky)
    assert 'href="javascript' not in page


def test_a_client_the_coach_does_not_own_is_named_but_not_linked(client, coach, book, make_user):
    owner = make_user("staff")
    session = book(coach, 24, "Owned Elsewhere", owner_id=owner.id)
    row = row_of(text(client.get("/bookings/mine")), session)
    assert "Owned Elsewhere" in row and f"/contacts/{session.contact_id}" not in row
    assert client.get(f"/contacts/{session.contact_id}").status_code == 404


def test_details_cost_the_same_queries_whatever_the_page_size(client, coach, book, db):
    def add_sessions(count: int, first: int) -> None:
        for i in range(first, first + count):
            booking = book(coach, 5 + 3 * i, f"Client {i}", payment_status="unpaid")
            for j in range(4):
                _message(booking.contact, f"m{j}", minutes_ago=10 + j, db=db)
                _note(booking.contact, coach, f"n{j}", minutes_ago=10 + j, db=db)
            services.add_session_note(booking, f"s{i}", actor=coach)
        db.session.commit()

    def statements(rows: int) -> list[str]:
        seen = []

        def record(conn, cursor, statement, parameters, context, executemany):
            seen.append(statement)

        sa.event.listen(db.engine, "before_cursor_execute", record)
        try:
            response = client.get("/bookings/mine")
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", record)
        assert response.status_code == 200
        assert len(row_ids(text(response))) == rows
        return seen

    add_sessions(2, 0)
    client.get("/bookings/mine")  # the top bar's unread count is cached from here on
    few = statements(2)
    add_sessions(6, 2)
    many = statements(8)
    assert len(many) == len(few), many


def test_staff_see_every_coach_and_may_choose_one(client, login_as, make_user, book):
    login_as("staff")
    carla = make_user("coach", name="Carla Coach")
    dan = make_user("coach", name="Dan Coach")
    hers, his = book(carla, 5, "Hers"), book(dan, 6, "His")
    page = text(client.get("/bookings/mine"))
    assert row_ids(page) == [hers.id, his.id]
    assert "This is the coaches' view" in page and 'name="coach"' in page
    assert "Carla Coach" in row_of(page, hers) and "Dan Coach" in row_of(page, his)
    assert row_ids(text(client.get(f"/bookings/mine?coach={dan.id}"))) == [his.id]


def test_signed_out_is_sent_to_sign_in(client, db):
    response = client.get("/bookings/mine")
    assert response.status_code == 302 and "/login" in response.headers["Location"]


# --- a session's page -------------------------------------------------------------


def test_the_session_page_shows_everything_about_it(client, coach, book, db):
    session = book(
        coach,
        24,
        "Ana Silva",
        meeting_url="https://meet.example.com/abc",
        payment_status="pending",
        timezone="Europe/Lisbon",
        questions=[{"question": "What should we focus on?", "answer": "Sleep"}],
    )
    _message(session.contact, "Looking forward!", minutes_ago=5, db=db)
    _note(session.contact, coach, "Prefers mornings", minutes_ago=5, db=db)
    step = BookingStep(
        booking_id=session.id,
        step="first_reminder",
        due_at=session.start_at - timedelta(hours=23, minutes=7),
        status="sent",
        detail="by SMS",
    )
    db.session.add(step)
    db.session.commit()

    page = text(client.get(f"/bookings/{session.id}"))
    shown = words(page)
    assert "Session with Ana Silva" in shown and "Scheduled" in shown
    assert '<a href="https://meet.example.com/abc" target="_blank" rel="noopener">' in page
    assert "Pending" in shown and "What should we focus on? Sleep" in shown
    assert "for the client" in shown and "(Europe/Lisbon)" in shown
    assert "Looking forward!" in shown and "Prefers mornings" in shown
    assert "Session booked: Session with Carla Coach" in shown  # the history
    assert f'id="booking-step-{step.id}"' in page and "First reminder" in shown
    assert "by SMS" in shown
    # Not yet started: no outcome buttons; a coach has no staff actions.
    assert "Mark completed" not in page and "No-show" not in page
    assert "Cancel session" not in page

    for part in ("header", "history", "steps", "session_notes"):
        body = text(client.htmx_get(f"/bookings/{session.id}?part={part}"))
        assert "<html" not in body and body.lstrip().startswith("<"), part
    assert "<html" in text(client.get(f"/bookings/{session.id}?part=history"))


def test_staff_get_reschedule_and_cancel_once_those_pages_exist(
    app, client, login_as, make_user, book
):
    login_as("staff")
    session = book(make_user("coach"), 24, "Ana")
    page = text(client.get(f"/bookings/{session.id}"))
    functions = app.view_functions
    assert (f"/bookings/{session.id}/edit" in page) == ("bookings.edit" in functions)
    assert (f"/bookings/{session.id}/cancel" in page) == ("bookings.cancel" in functions)


# --- outcomes ---------------------------------------------------------------------


def test_mark_completed_from_the_session_page(client, coach, book, db):
    session = book(coach, -2, "Ana")
    page = text(client.get(f"/bookings/{session.id}"))
    assert "Mark completed" in page and "No-show" in page
    response = client.form(f"/bookings/{session.id}/outcome", {"outcome": "completed"})
    assert response.status_code == 303
    assert response.headers["Location"] == f"/bookings/{session.id}"
    assert fresh(db, session).status == "completed"
    page = text(client.get(f"/bookings/{session.id}"))
    assert "Marked as completed." in page
    assert "Session completed: Session with Carla Coach" in words(page)
    # Completed can still become a no-show (and back), never the same twice.
    assert "Mark completed" not in page and "No-show" in page
    events = db.session.scalars(
        sa.select(BookingEvent.kind).where(BookingEvent.booking_id == session.id)
    ).all()
    assert events.count("completed") == 1


def test_no_show_over_htmx_re_renders_the_header_and_refreshes_history(client, coach, book, db):
    session = book(coach, -2, "Ana")
    response = client.form(f"/bookings/{session.id}/outcome", {"outcome": "no_show"}, htmx=True)
    assert response.status_code == 200
    body = text(response)
    assert "<html" not in body and body.lstrip().startswith('<div id="session-header"')
    assert "No-show" in body and "status-no_show" in body
    assert response.headers["HX-Trigger"] == "booking-updated"
    assert fresh(db, session).status == "no_show"


@pytest.mark.parametrize("htmx", [False, True])
def test_mark_completed_from_my_sessions_keeps_the_list(client, coach, book, db, htmx):
    session = book(coach, -2, "Ana", meeting_url="https://zoom.example.com/j/9")
    page = text(client.get("/bookings/mine?tab=past"))
    row = row_of(page, session)
    assert "Mark completed" in row and 'name="view" value="row"' in row
    back = "/bookings/mine?tab=past"
    data = {"outcome": "completed", "view": "row", "next": back}
    response = client.form(f"/bookings/{session.id}/outcome", data, htmx=htmx)
    assert fresh(db, session).status == "completed"
    if htmx:
        assert response.status_code == 200
        body = text(response)
        assert body.lstrip().startswith(f'<tbody class="session" id="booking-{session.id}">')
        assert "status-completed" in body and "<details open>" in body
        assert "Mark completed" not in body and "https://zoom.example.com/j/9" in body
        assert f'name="next" value="{back}"' in body.replace("&amp;", "&")
    else:
        assert response.status_code == 303 and response.headers["Location"] == back
        page = text(client.get(back))
        assert "Marked as completed." in page and "status-completed" in row_of(page, session)


@pytest.mark.parametrize("htmx", [False, True])
@pytest.mark.parametrize(
    ("hours", "cancel", "outcome", "message"),
    [
        (5, False, "completed", "This session has not started yet."),
        (-5, True, "completed", "A canceled session cannot be marked as taken place."),
        (-5, False, "finished", "Choose completed or no-show."),
    ],
)
def test_an_outcome_is_refused_with_a_clear_message(
    client, coach, book, db, htmx, hours, cancel, outcome, message
):
    session = book(coach, hours, "Ana")
    if cancel:
        services.cancel_booking(session, actor=coach)
        db.session.commit()
    status = fresh(db, session).status
    page = text(client.get(f"/bookings/{session.id}"))
    assert ("Mark completed" in page) == (hours < 0 and not cancel)
    response = client.form(f"/bookings/{session.id}/outcome", {"outcome": outcome}, htmx=htmx)
    if htmx:
        assert response.status_code == 200
        assert message in text(response) and "<html" not in text(response)
        row = client.form(
            f"/bookings/{session.id}/outcome", {"outcome": outcome, "view": "row"}, htmx=True
        )
        assert row.status_code == 200 and message in text(row)
        assert text(row).lstrip().startswith("<tbody")
    else:
        assert response.status_code == 303
        assert message in text(client.get(response.headers["Location"]))
    assert fresh(db, session).status == status


def test_an_outside_next_is_not_followed(client, coach, book):
    session = book(coach, -2, "Ana")
    data = {"outcome": "completed", "next": "https://evil.example.com/"}
    response = client.form(f"/bookings/{session.id}/outcome", data)
    assert response.headers["Location"] == f"/bookings/{session.id}"


# --- session notes ------------------------------------------------------------------


@pytest.mark.parametrize("htmx", [False, True])
def test_a_session_note_is_added_and_shows_on_the_clients_timeline(client, coach, book, db, htmx):
    session = book(coach, -2, "Ana")
    response = client.form(
        f"/bookings/{session.id}/notes", {"body": "  Worked on breathing.  "}, htmx=htmx
    )
    [note] = db.session.scalars(sa.select(SessionNote)).all()
    assert note.body == "Worked on breathing." and note.author_id == coach.id
    assert note.contact_id == session.contact_id
    if htmx:
        assert response.status_code == 200
        body = text(response)
        assert body.lstrip().startswith('<section id="session-notes"')
        assert "Worked on breathing." in body and "<html" not in body
    else:
        assert response.status_code == 303
        assert response.headers["Location"] == f"/bookings/{session.id}#session-notes"
        page = text(client.get(f"/bookings/{session.id}"))
        assert "Note added." in page and "Worked on breathing." in page
    contact_page = text(client.get(f"/contacts/{session.contact_id}"))
    timeline = contact_page[contact_page.index('<section id="timeline"') :]
    assert "Session note: Session with Carla Coach" in timeline
    assert "Worked on breathing." in timeline


@pytest.mark.parametrize("htmx", [False, True])
def test_an_empty_session_note_is_refused_in_place(client, coach, book, db, htmx):
    session = book(coach, -2, "Ana")
    response = client.form(f"/bookings/{session.id}/notes", {"body": "   "}, htmx=htmx)
    assert response.status_code == 422
    body = text(response)
    assert ("<html" in body) is not htmx
    assert "Write something in the note first." in body
    long = "x" * 10_001
    response = client.form(f"/bookings/{session.id}/notes", {"body": long}, htmx=htmx)
    assert response.status_code == 422
    body = text(response)
    assert "Keep the note under 10,000 characters (it has 10,001)." in body
    assert long in body  # nothing typed is lost
    assert db.session.scalars(sa.select(SessionNote)).all() == []


# --- coach scoping by URL ---------------------------------------------------------


def test_another_coach_gets_404_for_a_session_and_its_actions(
    client, login_as, make_user, book, db
):
    owner = make_user("coach")
    session = book(owner, -2, "Not Yours")
    login_as("coach")
    assert client.get(f"/bookings/{session.id}").status_code == 404
    for part in ("header", "history", "steps", "session_notes"):
        assert client.htmx_get(f"/bookings/{session.id}?part={part}").status_code == 404
    for htmx in (False, True):
        outcome = {"outcome": "completed", "view": "row"}
        response = client.form(f"/bookings/{session.id}/outcome", outcome, htmx=htmx)
        assert response.status_code == 404
        response = client.form(f"/bookings/{session.id}/notes", {"body": "Hi"}, htmx=htmx)
        assert response.status_code == 404
    assert fresh(db, session).status == "scheduled"
    assert db.session.scalars(sa.select(SessionNote)).all() == []
    assert client.get("/bookings/999999").status_code == 404


def _fill(rule, booking_id: int) -> str:
    """The rule's URL for `booking_id`; any other argument gets a placeholder."""
    url = rule.rule.replace("<int:booking_id>", str(booking_id))
    url = re.sub(r"<int:[^>]+>", "1", url)
    return re.sub(r"<[^>]+>", "x", url)


def test_every_booking_url_answers_404_or_403_to_another_coach(
    app, client, login_as, make_user, book, db
):
    """Walks every `bookings.*` rule with a booking id, routes of other modules included."""
    owner = make_user("coach")
    session = book(owner, -2, "Not Yours", meeting_url="https://zoom.example.com/j/1")
    upcoming = book(owner, 30, "Also Not Yours")
    login_as("coach")
    rules = [
        r
        for r in app.url_map.iter_rules()
        if r.endpoint.startswith("bookings.") and "<int:booking_id>" in r.rule
    ]
    walked = {r.endpoint for r in rules}
    assert {"bookings.show", "bookings.outcome", "bookings.add_note"} <= walked
    form = {
        "outcome": "completed",
        "body": "Hijacked",
        "reason": "Hijacked",
        "view": "row",
        "start": "2030-01-01",
        "end": "2030-01-02",
        "date": "2030-01-01",
        "time": "10:00",
        "coach_id": "",
        "service_id": "",
    }
    for target in (session, upcoming):
        for rule in rules:
            url = _fill(rule, target.id)
            if "GET" in rule.methods:
                for get in (client.get, client.htmx_get):
                    status = get(url).status_code
                    assert status in (403, 404), (rule.endpoint, url, status)
            if "POST" in rule.methods:
                for htmx in (False, True):
                    status = client.form(url, form, htmx=htmx).status_code
                    assert status in (403, 404), (rule.endpoint, url, status)
    db.session.expire_all()
    assert fresh(db, session).status == "scheduled"
    assert fresh(db, upcoming).status == "scheduled"
    assert fresh(db, upcoming).start_at == upcoming.start_at
    assert db.session.scalars(sa.select(SessionNote)).all() == []


# --- the contact's timeline -------------------------------------------------------


def test_booked_rescheduled_canceled_and_a_note_show_on_the_contacts_timeline(
    client, login_as, make_user, make_contact, make_booking, db
):
    login_as("staff")
    coach = make_user("coach", name="Carla Coach")
    contact = make_contact("Ana Silva")
    first = make_booking(contact, coach, start_at=hours_from_now(48))
    services.reschedule_booking(
        first,
        start_at=first.start_at + timedelta(days=1),
        end_at=first.end_at + timedelta(days=1),
        actor=coach,
        reason="Client asked",
    )
    services.cancel_booking(first, actor=coach, reason="Travelling")
    second = make_booking(contact, coach, start_at=hours_from_now(-3))
    services.add_session_note(second, "Great progress", actor=coach)
    db.session.commit()

    page = text(client.get(f"/contacts/{contact.id}"))
    timeline = words(page[page.index('<section id="timeline"') :])
    assert "Session booked: Session with Carla Coach" in timeline
    assert "Session rescheduled to" in timeline and "Client asked" in timeline
    assert "Session canceled: Session with Carla Coach" in timeline
    assert "Travelling" in timeline
    assert "Session note: Session with Carla Coach" in timeline
    assert "Great progress" in timeline
    # Each entry opens its session.
    assert f'href="/bookings/{first.id}"' in page and f'href="/bookings/{second.id}"' in page
