"""Benchmark seeding: `flask seed contacts` makes realistic contacts that search finds."""

from __future__ import annotations

import re
from collections import Counter
from datetime import timedelta

import phonenumbers

from crm.contacts.listing import search_condition
from crm.contacts.models import STATUSES, Contact
from crm.users.models import User

EMAIL_RE = re.compile(r"^[a-z0-9._]+@[a-z0-9-]+(\.[a-z0-9-]+)+$")


def seed(app, count: int, rng_seed: int = 11) -> None:
    args = ["seed", "contacts", "--count", str(count), "--seed", str(rng_seed)]
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    assert re.search(rf"Added {count:,} contacts in [\d.]+ s\.", result.output), result.output


def all_contacts(db) -> list[Contact]:
    db.session.expire_all()
    return list(db.session.execute(db.select(Contact).order_by(Contact.id)).unique().scalars())


def found(db, term: str) -> set[int]:
    query = db.select(Contact.id).where(search_condition(term))
    return set(db.session.execute(query).scalars())


def test_seeded_contacts_look_real(app, db):
    seed(app, 400)
    contacts = all_contacts(db)
    assert len(contacts) == 400

    phones = [c.phone for c in contacts if c.phone]
    assert 300 < len(phones) < 400  # most have a phone, some do not
    regions = Counter()
    for phone in phones:
        number = phonenumbers.parse(phone)
        assert phonenumbers.is_valid_number(number), phone
        assert phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) == phone
        regions[phonenumbers.region_code_for_number(number)] += 1
    assert {"US", "GB", "DE", "FR", "ES", "BR", "IN", "AU"} <= set(regions), regions

    emails = [c.email for c in contacts if c.email]
    assert 300 < len(emails) < 400
    assert all(EMAIL_RE.match(email) for email in emails), emails
    assert len(set(emails)) == len(emails)

    names = {c.name for c in contacts}
    assert len(names) > 200
    assert any(re.search(r"[^\x00-\x7f]", name) for name in names)  # not only ASCII names

    statuses = Counter(c.status for c in contacts)
    assert set(statuses) <= set(STATUSES)
    assert statuses.most_common(1)[0][0] == "active" and len(statuses) == 3

    tag_counts = Counter(len(c.tags) for c in contacts)
    assert set(tag_counts) == {0, 1, 2, 3}
    assert len({tag.name for c in contacts for tag in c.tags}) >= 15

    contacted = [c.last_contact_at for c in contacts if c.last_contact_at]
    assert 0 < len(contacted) < 400
    assert all(c.last_contact_at is None or c.last_contact_at >= c.created_at for c in contacts)
    # Added over time: newest first (id order) agrees with the created dates shown.
    by_id = sorted(contacts, key=lambda c: c.id)
    assert all(a.created_at <= b.created_at for a, b in zip(by_id, by_id[1:], strict=False))
    assert by_id[-1].created_at - by_id[0].created_at > timedelta(days=300)


def test_seed_creates_coaches_when_there_are_none(app, db):
    seed(app, 200)
    owner_ids = {c.owner_id for c in all_contacts(db)}
    owners = db.session.execute(db.select(User).where(User.id.in_(owner_ids))).scalars().all()
    assert len(owners) >= 3
    assert all(user.role == "coach" and not user.has_password for user in owners)
    assert None in owner_ids  # a few contacts are nobody's yet


def test_seed_assigns_only_active_coaches(app, db, make_user):
    active = make_user("coach")
    make_user("coach", active=False)
    make_user("staff")
    seed(app, 200)
    assert {c.owner_id for c in all_contacts(db)} == {active.id, None}


def test_seeded_contacts_are_searchable(app, db, client, login_as):
    seed(app, 300)
    contacts = all_contacts(db)
    with_phone = next(c for c in contacts if c.phone and c.email and len(c.name.split()[-1]) > 5)
    # The phone's last seven digits, typed the way people type them.
    digits = with_phone.phone[-7:]
    assert with_phone.id in found(db, f"{digits[:3]} {digits[3:]}")
    assert with_phone.id in found(db, f"{digits[:3]}-{digits[3:]}")
    local = with_phone.email.split("@")[0]
    assert with_phone.id in found(db, local[1:])
    last_name = with_phone.name.split()[-1]
    matches = found(db, last_name[1:5])
    assert with_phone.id in matches
    assert matches == {c.id for c in contacts if last_name[1:5].lower() in searchable(c)}

    login_as("staff")
    page = client.get(f"/contacts/?q={local}").get_data(as_text=True)
    assert f"/contacts/{with_phone.id}" in page


def searchable(contact: Contact) -> str:
    return f"{contact.name} {contact.email or ''} {contact.phone or ''}".lower()


def test_seed_appends_and_keeps_search_up_to_date(app, db, make_contact):
    seed(app, 300, rng_seed=1)
    # Fewer than there are: this batch goes in with the indexes in place.
    seed(app, 100, rng_seed=2)
    contacts = all_contacts(db)
    assert len(contacts) == 400 and len({c.id for c in contacts}) == 400
    last = contacts[-1]
    assert last.id in found(db, last.name.split()[-1])
    # The search triggers are back: a contact added afterwards is found too.
    added = make_contact("Zebulon Quixotic", phone="+14155552671")
    assert found(db, "quixot") == {added.id}
    assert added.id in found(db, "415 555 26")


def test_seed_refuses_a_count_below_one(app, db):
    result = app.test_cli_runner().invoke(args=["seed", "contacts", "--count", "0"])
    assert result.exit_code == 2 and "--count" in result.output
    assert all_contacts(db) == []
