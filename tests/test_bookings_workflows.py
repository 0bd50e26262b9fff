"""Booking workflows: confirmation, the coach's notification, reminders that move with the
session and respect local time and quiet hours, the follow-up, per-service settings, the
sweep; services and notifications pages. Jobs run through RQ (SimpleWorker) and Twilio
through its fake; email through a local SMTP server."""

from __future__ import annotations

import html
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from rq import SimpleWorker
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from crm.bookings import services, workflows
from crm.bookings.models import BookingEvent, BookingStep, Notification, Service, WorkflowStep
from crm.contacts.models import Contact
from crm.conversations.models import Message, MessageTemplate
from crm.conversations.services import opt_out
from crm.database import utcnow
from crm.redis_client import get_redis
from jobs import get_queue
from jobs.bookings import run_step, sweep_steps
from tests.fakes.smtp import serve_smtp

LONDON = ZoneInfo("Europe/London")
CONTENT_SID = "HX" + "0123456789abcdef" * 2


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def _smtp_server():
    with serve_smtp() as fake:
        yield fake


@pytest.fixture
def smtp_fake(_smtp_server, app, monkeypatch):
    """A local SMTP server, with the app's SMTP settings pointing at it for this test."""
    _smtp_server.reset()
    for key, value in _smtp_server.config().items():
        monkeypatch.setitem(app.config, key, value)
    yield _smtp_server
    _smtp_server.reset()


@pytest.fixture(autouse=True)
def _settings(app, monkeypatch):
    """No quiet hours and no SMTP unless a test asks: timings do not depend on the clock."""
    monkeypatch.setitem(app.config, "BOOKING_QUIET_HOURS", "")
    monkeypatch.setitem(app.config, "SMTP_HOST", None)


def run_worker(*queues: str) -> None:
    names = queues or ("default", "messaging")
    SimpleWorker([get_queue(n) for n in names], connection=get_redis()).work(burst=True)


def scheduled_steps() -> dict[int, datetime]:
    """The step jobs waiting in RQ's scheduler: step id -> the time they are scheduled for."""
    registry = ScheduledJobRegistry(queue=get_queue("default"))
    found = {}
    for job_id in registry.get_job_ids(cleanup=False):
        if job_id.startswith("booking-step-"):
            found[int(job_id.removeprefix("booking-step-"))] = registry.get_scheduled_time(job_id)
    return found


def run_scheduled(*step_ids: int) -> None:
    """Their time has come: move these steps' scheduled jobs to the queue, run a worker."""
    queue = get_queue("default")
    registry = ScheduledJobRegistry(queue=queue)
    for step_id in step_ids:
        job = Job.fetch(f"booking-step-{step_id}", connection=get_redis())
        registry.remove(job)
        queue.enqueue_job(job)
    run_worker()


def steps(db, booking, step=None) -> list[BookingStep]:
    db.session.expire_all()
    query = sa.select(BookingStep).where(BookingStep.booking_id == booking.id)
    if step:
        query = query.where(BookingStep.step == step)
    return db.session.scalars(query.order_by(BookingStep.id)).all()


def one(db, booking, step, status="scheduled") -> BookingStep:
    [row] = [r for r in steps(db, booking, step) if r.status == status]
    return row


def sms_bodies(twilio_fake) -> list[str]:
    return [m["body"] for m in twilio_fake.messages.values()]


@pytest.fixture
def coach(make_user):
    return make_user("coach", name="Casey Coach", timezone="Europe/London")


@pytest.fixture
def client_contact(make_contact):
    return make_contact("Ana Silva", phone="+14155550101", timezone="Europe/London")


@pytest.fixture
def service(db, coach):
    service = Service(name="Discovery Call", duration_minutes=60, coach_id=coach.id)
    db.session.add(service)
    db.session.commit()
    return service


def book(make_booking, contact, coach, service, start_at, **fields):
    return make_booking(
        contact,
        coach,
        start_at=start_at,
        service=service,
        meeting_url="https://meet.example.com/casey",
        **fields,
    )


def in_days(days: int, hour: int = 10) -> datetime:
    """A future day at `hour`:00 London time."""
    day = datetime.now(LONDON).date() + timedelta(days=days)
    return datetime.combine(day, time(hour), tzinfo=LONDON).astimezone(UTC)


def next_change(month: int) -> date:
    """The next Sunday on which the UK clocks change in `month` (3: spring, 10: autumn)."""
    day = datetime.now(UTC).date() + timedelta(days=3)
    while True:
        day += timedelta(days=1)
        if day.month == month and day.weekday() == 6 and (day + timedelta(days=7)).month != month:
            return day


# --- timing: the pure functions -------------------------------------------------------


def london(*args) -> datetime:
    return datetime(*args, tzinfo=LONDON).astimezone(UTC)


def test_a_whole_day_offset_keeps_the_local_time_across_daylight_saving_changes():
    # Spring 2026 (clocks forward on Sunday 29 March): 23 hours of real time.
    session = london(2026, 3, 29, 10)
    reminder = workflows.shift(session, -24 * 60, LONDON)
    assert reminder == london(2026, 3, 28, 10) == datetime(2026, 3, 28, 10, tzinfo=UTC)
    assert session - reminder == timedelta(hours=23)
    # A Monday session the day after: its reminder is on the change day, 10:00 BST = 09:00 UTC.
    monday = london(2026, 3, 30, 10)
    assert workflows.shift(monday, -24 * 60, LONDON) == datetime(2026, 3, 29, 9, tzinfo=UTC)
    # Autumn 2026 (clocks back on Sunday 25 October): 25 hours.
    session = london(2026, 10, 25, 10)
    reminder = workflows.shift(session, -24 * 60, LONDON)
    assert reminder == datetime(2026, 10, 24, 9, tzinfo=UTC)
    assert session - reminder == timedelta(hours=25)
    # Other offsets are exact durations, whatever the clocks do.
    assert workflows.shift(session, -60, LONDON) == session - timedelta(hours=1)
    assert workflows.shift(session, -25 * 60, LONDON) == session - timedelta(hours=25)
    assert workflows.shift(session, 2 * 24 * 60, LONDON) == london(2026, 10, 27, 10)


def test_quiet_hours_parse_and_bound_a_night():
    quiet = workflows.parse_quiet_hours("21:00-08:00")
    assert quiet == (time(21), time(8))
    assert workflows.parse_quiet_hours("") is None
    assert workflows.parse_quiet_hours("09:00-09:00") is None
    with pytest.raises(ValueError):
        workflows.parse_quiet_hours("late")
    evening = workflows.quiet_period(london(2026, 6, 1, 22, 30), quiet, LONDON)
    assert evening == (london(2026, 6, 1, 21), london(2026, 6, 2, 8))
    morning = workflows.quiet_period(london(2026, 6, 2, 6), quiet, LONDON)
    assert morning == (london(2026, 6, 1, 21), london(2026, 6, 2, 8))
    assert workflows.quiet_period(london(2026, 6, 2, 8), quiet, LONDON) is None
    assert workflows.quiet_period(london(2026, 6, 2, 20, 59), quiet, LONDON) is None
    lunch = workflows.parse_quiet_hours("12:00-14:00")
    assert workflows.quiet_period(london(2026, 6, 2, 13), lunch, LONDON) == (
        london(2026, 6, 2, 12),
        london(2026, 6, 2, 14),
    )


def test_a_reminder_in_quiet_hours_moves_to_their_end_or_the_evening_before():
    quiet = (time(21), time(8))
    # Due 23:00 for a 10:00 session: 08:00 is still before it.
    assert workflows.reminder_time(
        london(2026, 6, 1, 23), london(2026, 6, 2, 10), quiet, LONDON
    ) == london(2026, 6, 2, 8)
    # Due 06:30 for a 07:30 session: 08:00 would be too late, so 21:00 the evening before.
    assert workflows.reminder_time(
        london(2026, 6, 2, 6, 30), london(2026, 6, 2, 7, 30), quiet, LONDON
    ) == london(2026, 6, 1, 21)
    # Outside quiet hours nothing moves; a follow-up moves to their end.
    due = london(2026, 6, 2, 12)
    assert workflows.reminder_time(due, due + timedelta(hours=1), quiet, LONDON) == due
    assert workflows.follow_up_time(london(2026, 6, 2, 22), quiet, LONDON) == london(2026, 6, 3, 8)
    assert workflows.reminder_time(due, due, None, LONDON) == due


# --- confirmation -------------------------------------------------------------------------


def test_a_booking_confirms_by_sms_once_and_shows_on_the_timeline(
    client, db, login_as, twilio_fake, make_booking, coach, client_contact, service
):
    start = in_days(3)
    booking = book(make_booking, client_contact, coach, service, start)
    confirmation = one(db, booking, "confirmation")
    assert abs(confirmation.due_at - utcnow()) < timedelta(minutes=1)
    run_worker()
    confirmation = one(db, booking, "confirmation", "sent")
    [sent] = twilio_fake.messages.values()
    assert sent["to"] == "+14155550101"
    expected_time = f"{start.astimezone(LONDON):%a} {start.astimezone(LONDON).day}"
    assert sent["body"].startswith("Hi Ana, your Discovery Call with Casey Coach is booked for ")
    assert expected_time in sent["body"] and "(Europe/London)" in sent["body"]
    assert sent["body"].endswith("Join here: https://meet.example.com/casey")
    message = db.session.get(Message, confirmation.message_id)
    assert message.sid == sent["sid"] and message.channel == "sms"
    # Running the step again sends nothing more.
    assert run_step(confirmation.id) is None
    run_worker()
    assert len(twilio_fake.messages) == 1
    events = db.session.scalars(
        sa.select(BookingEvent).where(
            BookingEvent.booking_id == booking.id, BookingEvent.kind == "step"
        )
    ).all()
    assert sorted(e.data["step"] for e in events) == ["coach_notification", "confirmation"]
    assert all(e.data["status"] == "sent" for e in events)
    login_as("staff")
    page = client.htmx_get(f"/contacts/{client_contact.id}?part=timeline").get_data(as_text=True)
    assert "Confirmation to the client: sent" in page
    assert "Sent by SMS: Hi Ana" in html.unescape(page)


def test_whatsapp_by_preference_and_a_template_outside_the_window(
    db, twilio_fake, make_booking, make_contact, coach, service
):
    contact = make_contact("Bo Chen", phone="+14155550102", preferred_channel="whatsapp")
    template = MessageTemplate(
        name="Booked",
        body="Hi {{first_name}}, {{service}} on {{session_time}}: {{meeting_link}}",
        content_sid=CONTENT_SID,
    )
    db.session.add(template)
    db.session.add(
        WorkflowStep(service_id=service.id, step="confirmation", template_id=template.id)
    )
    db.session.commit()
    start = in_days(4)
    book(make_booking, contact, coach, service, start)
    run_worker()
    [sent] = twilio_fake.messages.values()
    assert sent["to"] == "whatsapp:+14155550102"
    request = twilio_fake.calls("messages_create")[-1]
    assert request.form["ContentSid"] == CONTENT_SID
    import json

    variables = json.loads(request.form["ContentVariables"])
    assert variables["1"] == "Bo" and variables["2"] == "Discovery Call"
    # The contact has no timezone: the coach's.
    assert f"{start.astimezone(LONDON):%H:%M} (Europe/London)" in variables["3"]
    assert variables["4"] == "https://meet.example.com/casey"


def test_whatsapp_outside_the_window_without_a_template_fails_with_the_reason(
    client, db, login_as, twilio_fake, make_booking, make_contact, coach, service
):
    contact = make_contact("Cy Diaz", phone="+14155550103", preferred_channel="whatsapp")
    booking = book(make_booking, contact, coach, service, in_days(5))
    run_worker()
    assert twilio_fake.messages == {}
    failed = one(db, booking, "confirmation", "failed")
    assert "outside WhatsApp's 24-hour window" in failed.detail
    login_as("staff")
    page = client.htmx_get(f"/contacts/{contact.id}?part=timeline").get_data(as_text=True)
    assert "Confirmation to the client: failed" in page
    assert "24-hour window" in html.unescape(page)


def test_an_opted_out_client_is_skipped_with_the_reason(
    db, twilio_fake, make_booking, client_contact, coach, service
):
    opt_out(client_contact, "sms", source="replied STOP")
    db.session.commit()
    booking = book(make_booking, client_contact, coach, service, in_days(2))
    run_worker()
    assert twilio_fake.messages == {}
    skipped = one(db, booking, "confirmation", "skipped")
    assert skipped.detail == "Not sent: Ana Silva opted out of SMS (replied STOP)."


# --- the coach ----------------------------------------------------------------------------


def test_the_coach_is_notified_in_the_app_and_by_email(
    db, twilio_fake, smtp_fake, make_booking, client_contact, coach, service
):
    booking = book(make_booking, client_contact, coach, service, in_days(6))
    run_worker()
    [notice] = db.session.scalars(sa.select(Notification).where(Notification.user_id == coach.id))
    assert notice.title.startswith("New session: Ana Silva, ")
    assert notice.url == f"/bookings/{booking.id}" and notice.read_at is None
    [mail] = smtp_fake.received
    assert mail.recipients == [coach.email] and mail.sender == "rapport@example.com"
    assert mail.subject == notice.title
    assert "Discovery Call with Casey Coach" in mail.body
    assert f"http://localhost/bookings/{booking.id}" in mail.body
    step = one(db, booking, "coach_notification", "sent")
    assert step.detail == f"Casey Coach was notified in Rapport. Emailed to {coach.email}."
    # A reschedule tells the coach again.
    services.reschedule_booking(
        booking,
        start_at=booking.start_at + timedelta(days=1),
        end_at=booking.end_at + timedelta(days=1),
        actor=None,
    )
    db.session.commit()
    run_worker()
    titles = db.session.scalars(
        sa.select(Notification.title).where(Notification.user_id == coach.id)
    ).all()
    assert sorted(t.split(":")[0] for t in titles) == ["New session", "Session moved"]
    assert len(smtp_fake.received) == 2


def test_a_refused_email_leaves_the_notification_and_says_why(
    db, twilio_fake, smtp_fake, make_booking, client_contact, coach, service
):
    smtp_fake.refuse_next(550)
    booking = book(make_booking, client_contact, coach, service, in_days(6))
    run_worker()
    step = one(db, booking, "coach_notification", "sent")
    assert f"The email to {coach.email} failed" in step.detail
    assert (
        db.session.scalar(
            sa.select(sa.func.count())
            .select_from(Notification)
            .where(Notification.user_id == coach.id)
        )
        == 1
    )
    assert smtp_fake.received == []


def test_without_smtp_the_coach_gets_only_the_notification(
    db, twilio_fake, make_booking, client_contact, coach, service
):
    booking = book(make_booking, client_contact, coach, service, in_days(6))
    run_worker()
    assert one(db, booking, "coach_notification", "sent").detail == (
        "Casey Coach was notified in Rapport."
    )


# --- reminders ----------------------------------------------------------------------------


def test_reminders_are_scheduled_in_rq_at_their_times(
    db, twilio_fake, make_booking, client_contact, coach, service
):
    start = in_days(3)
    booking = book(make_booking, client_contact, coach, service, start)
    first, second = one(db, booking, "first_reminder"), one(db, booking, "second_reminder")
    assert first.due_at == workflows.shift(start, -24 * 60, LONDON)  # 10:00 the day before
    assert second.due_at == start - timedelta(hours=1)
    jobs = scheduled_steps()
    assert jobs[first.id] == first.due_at.replace(microsecond=0)
    assert jobs[second.id] == second.due_at.replace(microsecond=0)
    run_scheduled(first.id)
    [reminder] = [b for b in sms_bodies(twilio_fake) if "a reminder" in b]
    assert reminder.startswith("Hi Ana, a reminder: your Discovery Call with Casey Coach is on ")
    assert one(db, booking, "first_reminder", "sent").message_id is not None


def test_a_reminder_is_not_sent_after_a_cancel(
    db, twilio_fake, make_booking, client_contact, coach, service
):
    booking = book(make_booking, client_contact, coach, service, in_days(3))
    run_worker()  # the confirmation
    first = one(db, booking, "first_reminder")
    services.cancel_booking(booking, actor=None, reason="Client is ill")
    db.session.commit()
    assert {r.step: r.status for r in steps(db, booking)}["first_reminder"] == "canceled"
    before = len(twilio_fake.messages)
    run_scheduled(first.id)  # its time comes
    assert len(twilio_fake.messages) == before
    first = db.session.get(BookingStep, first.id)
    assert first.status == "canceled" and first.detail == "The session was canceled."
    assert run_step(first.id) is None


def test_a_reschedule_moves_the_reminders(
    db, twilio_fake, make_booking, client_contact, coach, service
):
    start = in_days(3)
    booking = book(make_booking, client_contact, coach, service, start)
    old_first, old_second = one(db, booking, "first_reminder"), one(db, booking, "second_reminder")
    new_start = start + timedelta(days=2, hours=3)
    services.reschedule_booking(
        booking, start_at=new_start, end_at=new_start + timedelta(hours=1), actor=None
    )
    db.session.commit()
    rows = steps(db, booking)
    assert db.session.get(BookingStep, old_first.id).status == "canceled"
    assert db.session.get(BookingStep, old_second.id).status == "canceled"
    new_first, new_second = one(db, booking, "first_reminder"), one(db, booking, "second_reminder")
    assert new_first.due_at == workflows.shift(new_start, -24 * 60, LONDON)
    assert new_second.due_at == new_start - timedelta(hours=1)
    assert len([r for r in rows if r.step == "confirmation"]) == 1  # no second confirmation
    jobs = scheduled_steps()
    assert jobs[new_first.id] == new_first.due_at.replace(microsecond=0)
    run_worker()  # the confirmation and the coach's notices
    before = len(twilio_fake.messages)
    run_scheduled(old_first.id, old_second.id)  # the old jobs wake up: nothing goes
    assert len(twilio_fake.messages) == before
    run_scheduled(new_second.id)
    assert len(twilio_fake.messages) == before + 1
    assert one(db, booking, "second_reminder", "sent").id == new_second.id


def test_a_reminder_whose_session_moved_under_it_cancels_itself(
    db, twilio_fake, make_booking, client_contact, coach, service
):
    """Even if the plan were not redone (a provider update applied by hand), the job checks."""
    booking = book(make_booking, client_contact, coach, service, in_days(3))
    second = one(db, booking, "second_reminder")
    booking.start_at += timedelta(hours=2)
    booking.end_at += timedelta(hours=2)
    db.session.commit()
    assert run_step(second.id) == "canceled"
    assert "moved" in db.session.get(BookingStep, second.id).detail


@pytest.mark.parametrize(("month", "hours"), [(3, 23), (10, 25)])
def test_reminders_fire_at_the_same_local_time_across_a_clock_change(
    db, twilio_fake, make_booking, client_contact, coach, service, month, hours
):
    change = next_change(month)  # a Sunday
    start = datetime.combine(change, time(10), tzinfo=LONDON).astimezone(UTC)
    booking = book(make_booking, client_contact, coach, service, start)
    first = one(db, booking, "first_reminder")
    assert first.due_at.astimezone(LONDON).replace(tzinfo=None) == datetime.combine(
        change - timedelta(days=1), time(10)
    )
    assert start - first.due_at == timedelta(hours=hours)
    assert scheduled_steps()[first.id] == first.due_at
    second = one(db, booking, "second_reminder")
    assert start - second.due_at == timedelta(hours=1)


def test_quiet_hours_move_reminders(
    app, db, twilio_fake, make_booking, client_contact, coach, service, monkeypatch
):
    monkeypatch.setitem(app.config, "BOOKING_QUIET_HOURS", "21:00-08:00")
    start = in_days(4, hour=7) + timedelta(minutes=30)  # 07:30 London
    booking = book(make_booking, client_contact, coach, service, start)
    local_day = start.astimezone(LONDON).date()
    first, second = one(db, booking, "first_reminder"), one(db, booking, "second_reminder")
    # 07:30 the day before is quiet: 08:00 that day, still before the session.
    assert first.due_at == datetime.combine(
        local_day - timedelta(days=1), time(8), tzinfo=LONDON
    ).astimezone(UTC)
    # 06:30 is quiet and 08:00 would be after the session: 21:00 the evening before.
    assert second.due_at == datetime.combine(
        local_day - timedelta(days=1), time(21), tzinfo=LONDON
    ).astimezone(UTC)
    # The job agrees with the plan: it sends.
    run_scheduled(second.id)
    assert one(db, booking, "second_reminder", "sent")


# --- follow-up ----------------------------------------------------------------------------


def test_a_follow_up_after_completion(
    db, twilio_fake, make_booking, client_contact, coach, service
):
    start = utcnow().replace(microsecond=0) - timedelta(minutes=70)
    booking = book(make_booking, client_contact, coach, service, start)
    assert steps(db, booking) == []  # a session already over: nothing to confirm or remind
    services.set_outcome(booking, "completed", actor=coach)
    db.session.commit()
    follow_up = one(db, booking, "follow_up")
    assert follow_up.due_at == booking.end_at + timedelta(hours=1)
    assert scheduled_steps()[follow_up.id] == follow_up.due_at
    run_scheduled(follow_up.id)
    [body] = sms_bodies(twilio_fake)
    assert body == (
        "Hi Ana, thank you for your Discovery Call with Casey Coach. "
        "Reply here if you have any questions."
    )
    assert one(db, booking, "follow_up", "sent")


def test_a_no_show_gets_no_follow_up(db, twilio_fake, make_booking, client_contact, coach, service):
    start = utcnow() - timedelta(minutes=10)
    booking = book(make_booking, client_contact, coach, service, start)
    # Under way: confirmed, but its reminders' times have passed.
    assert {r.step for r in steps(db, booking)} == {"confirmation", "coach_notification"}
    services.set_outcome(booking, "no_show", actor=coach)
    db.session.commit()
    assert {r.step for r in steps(db, booking)} == {"confirmation", "coach_notification"}


# --- per-service settings -----------------------------------------------------------------


def test_a_disabled_step_is_not_planned_and_a_custom_offset_is_used(
    db, twilio_fake, make_booking, client_contact, coach, service
):
    db.session.add_all(
        [
            WorkflowStep(service_id=service.id, step="first_reminder", enabled=False),
            WorkflowStep(service_id=service.id, step="second_reminder", offset_minutes=-180),
            WorkflowStep(service_id=service.id, step="confirmation", enabled=False),
        ]
    )
    db.session.commit()
    db.session.expire(service)
    start = in_days(3)
    booking = book(make_booking, client_contact, coach, service, start)
    planned = {r.step: r.due_at for r in steps(db, booking)}
    assert set(planned) == {"second_reminder", "coach_notification"}
    assert planned["second_reminder"] == start - timedelta(hours=3)


@pytest.mark.parametrize("htmx", [False, True])
def test_staff_create_a_service_with_its_steps(client, db, login_as, coach, htmx):
    login_as("staff")
    template = MessageTemplate(name="Soon", body="See you {{session_time}}")
    db.session.add(template)
    db.session.commit()
    form = {
        "name": "Deep Dive",
        "duration_minutes": "90",
        "price": "120.50",
        "currency": "eur",
        "coach_id": str(coach.id),
        "active": "1",
        "confirmation-enabled": "1",
        "confirmation-amount": "0",
        "confirmation-unit": "minutes",
        "coach_notification-enabled": "1",
        "coach_notification-amount": "0",
        "coach_notification-unit": "minutes",
        "first_reminder-amount": "2",
        "first_reminder-unit": "days",
        "second_reminder-enabled": "1",
        "second_reminder-amount": "3",
        "second_reminder-unit": "hours",
        "second_reminder-template": str(template.id),
        "follow_up-enabled": "1",
        "follow_up-amount": "1",
        "follow_up-unit": "days",
    }
    response = client.form("/bookings/services/new", form, htmx=htmx)
    assert response.status_code == 303
    assert response.headers["Location"] == "/bookings/services"
    [service] = db.session.scalars(sa.select(Service).where(Service.name == "Deep Dive"))
    assert (service.duration_minutes, service.price_minor, service.currency) == (90, 12050, "EUR")
    assert service.coach_id == coach.id and service.active
    settings = workflows.step_settings(service)
    assert not settings["first_reminder"].enabled
    assert settings["first_reminder"].offset == -2 * 24 * 60
    assert settings["second_reminder"].offset == -180
    assert settings["second_reminder"].template_id == template.id
    assert settings["follow_up"].offset == 24 * 60
    page = client.get("/bookings/services").get_data(as_text=True)
    assert "Saved the service “Deep Dive”." in page
    assert f'id="service-{service.id}"' in page and "120.50 EUR" in page
    edit = client.get(f"/bookings/services/{service.id}").get_data(as_text=True)
    assert 'name="first_reminder-amount" type="number" min="0" value="2"' in edit
    assert 'value="120.50"' in edit


@pytest.mark.parametrize("htmx", [False, True])
def test_an_invalid_service_form_is_shown_again_with_errors(client, db, login_as, htmx):
    login_as("staff")
    response = client.form(
        "/bookings/services/new",
        {
            "name": "",
            "duration_minutes": "0",
            "price": "10.123",
            "currency": "EUR",
            "first_reminder-amount": "x",
        },
        htmx=htmx,
    )
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert page.lstrip().startswith('<form id="service-form"') == htmx
    assert "Enter a name." in page and "Enter a duration from 5 to 1,440 minutes." in page
    assert "EUR has 2 decimals." in page and "Enter a whole number, up to 60 days." in page
    assert db.session.scalar(sa.select(sa.func.count()).select_from(Service)) == 0


def test_editing_a_service_moves_its_upcoming_reminders(
    client, db, login_as, twilio_fake, make_booking, client_contact, coach, service
):
    start = in_days(3)
    booking = book(make_booking, client_contact, coach, service, start)
    old = one(db, booking, "second_reminder")
    login_as("staff")
    form = {
        "name": service.name,
        "duration_minutes": "60",
        "coach_id": str(coach.id),
        "active": "1",
    }
    for step, (on, amount, unit) in {
        "confirmation": ("1", "0", "minutes"),
        "coach_notification": ("1", "0", "minutes"),
        "first_reminder": ("", "1", "days"),
        "second_reminder": ("1", "2", "hours"),
        "follow_up": ("1", "1", "hours"),
    }.items():
        form.update({f"{step}-enabled": on, f"{step}-amount": amount, f"{step}-unit": unit})
    assert client.form(f"/bookings/services/{service.id}", form).status_code == 303
    assert db.session.get(BookingStep, old.id).status == "canceled"
    assert one(db, booking, "second_reminder").due_at == start - timedelta(hours=2)
    assert [r.status for r in steps(db, booking, "first_reminder")] == ["canceled"]


def test_services_are_for_staff(client, login_as, service):
    login_as("coach")
    assert client.get("/bookings/services").status_code == 403
    assert client.get(f"/bookings/services/{service.id}").status_code == 403
    assert client.get("/bookings/services/new").status_code == 403


# --- the sweep ----------------------------------------------------------------------------


def test_the_sweep_enqueues_a_lost_step_once(
    db, redis, twilio_fake, make_booking, client_contact, coach, service
):
    booking = book(make_booking, client_contact, coach, service, in_days(3))
    confirmation = one(db, booking, "confirmation")
    confirmation.due_at = utcnow() - timedelta(minutes=5)
    db.session.commit()
    get_queue("default").empty()  # the worker that held its job died with it
    assert sweep_steps() == 1  # the confirmation; the coach's notice is not late yet
    assert sweep_steps() == 0  # their jobs wait in the queue now
    run_worker()
    assert one(db, booking, "confirmation", "sent")
    assert len(twilio_fake.messages) == 1
    # The sweep scheduled its own next run.
    registry = ScheduledJobRegistry(queue=get_queue("default"))
    assert any(i.startswith("bookings-sweep-") for i in registry.get_job_ids(cleanup=False))


# --- notifications --------------------------------------------------------------------------


@pytest.mark.parametrize("htmx", [False, True])
def test_notifications_list_the_users_own_and_mark_read(client, db, login_as, make_user, htmx):
    me = login_as("coach")
    other = make_user("coach")
    old = Notification(user_id=me.id, title="Older", created_at=utcnow() - timedelta(hours=1))
    new = Notification(user_id=me.id, title="Newer", body="Ana, Tue 10:00", url="/bookings/1")
    theirs = Notification(user_id=other.id, title="Not mine")
    db.session.add_all([old, new, theirs])
    db.session.commit()
    page = client.get("/bookings/notifications").get_data(as_text=True)
    assert page.index("Newer") < page.index("Older") and "Not mine" not in page
    assert "2 unread" in page
    response = client.form(f"/bookings/notifications/{new.id}/read", htmx=htmx)
    db.session.expire_all()
    assert db.session.get(Notification, new.id).read_at is not None
    if htmx:
        assert response.status_code == 200
        assert response.headers["HX-Trigger"] == "notifications-updated"
        fragment = response.get_data(as_text=True).strip()
        assert fragment.startswith(f'<li id="notification-{new.id}" class="read"')
    else:
        assert response.status_code == 303
        assert response.headers["Location"] == "/bookings/notifications"
    assert client.form(f"/bookings/notifications/{theirs.id}/read").status_code == 404
    assert "1 unread" in client.get("/bookings/notifications").get_data(as_text=True)
    response = client.form("/bookings/notifications/read", htmx=htmx)
    assert response.status_code == (200 if htmx else 303)
    db.session.expire_all()
    assert db.session.get(Notification, old.id).read_at is not None
    assert db.session.get(Notification, theirs.id).read_at is None


# --- the contact's channel ------------------------------------------------------------------


def test_the_preferred_channel_is_editable_on_the_contact_form(
    client, db, login_as, client_contact
):
    login_as("staff")
    edit = client.get(f"/contacts/{client_contact.id}/edit").get_data(as_text=True)
    assert 'name="preferred_channel"' in edit
    response = client.form(
        f"/contacts/{client_contact.id}",
        {
            "name": "Ana Silva",
            "phone": "+14155550101",
            "email": "",
            "status": "active",
            "owner_id": "",
            "preferred_channel": "whatsapp",
        },
    )
    assert response.status_code == 303
    db.session.expire_all()
    assert db.session.get(Contact, client_contact.id).preferred_channel == "whatsapp"
    response = client.form(
        f"/contacts/{client_contact.id}",
        {"name": "Ana Silva", "phone": "+14155550101", "preferred_channel": "pigeon"},
    )
    assert "Choose SMS or WhatsApp." in response.get_data(as_text=True)


def test_the_top_bar_counts_unread_notifications_and_drops_the_count_when_read(
    client, db, login_as
):
    from crm.bookings.notifications import notify

    me = login_as("coach")
    assert 'aria-label="Notifications"' in client.get("/contacts/").get_data(as_text=True)
    notify(me.id, "Session booked: Ana")
    db.session.commit()
    page = client.get("/contacts/").get_data(as_text=True)
    assert 'aria-label="Notifications: 1 unread"' in page
    (notification,) = db.session.scalars(sa.select(Notification)).all()
    client.form(f"/bookings/notifications/{notification.id}/read")
    assert 'aria-label="Notifications"' in client.get("/contacts/").get_data(as_text=True)
