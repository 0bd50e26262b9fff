"""Demo data for a fresh install: users with random passwords and a few dozen contacts."""

from __future__ import annotations

import random
import secrets
from datetime import timedelta
from pathlib import Path

import phonenumbers

from crm.contacts.models import Contact, Note, Tag
from crm.database import utcnow
from crm.extensions import db
from crm.users.models import User
from crm.users.services import create_user

DEMO_USERS = (
    ("admin@example.com", "Avery Admin", "admin", "UTC"),
    ("staff@example.com", "Sam Staff", "staff", "Europe/London"),
    ("ana.coach@example.com", "Ana Coach", "coach", "America/New_York"),
    ("ben.coach@example.com", "Ben Coach", "coach", "Europe/Berlin"),
)
FIRST = "Olivia Liam Emma Noah Amelia Oliver Sofia Mateo Hana Yusuf Chloe Lucas Ines Kai Maya "
FIRST += "Leo Zara Omar Priya Diego Elena Tomas Aiko Nia Felix"
LAST = "Smith Garcia Müller Rossi Silva Kim Nguyen Okafor Dubois Novak Haddad Jensen Costa "
LAST += "O'Brien Tanaka Petrov Mensah Larsen"
REGIONS = ("US", "GB", "DE", "BR", "ES", "AU")
TAGS = ("vip", "new-client", "package", "lead", "alumni", "follow-up")


def demo_phone(rng: random.Random, region: str) -> str:
    """A valid mobile number in `region`, in E.164."""
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    national = str(example.national_number)
    while True:
        tail = "".join(rng.choice("0123456789") for _ in range(4))
        candidate = phonenumbers.parse(f"+{example.country_code}{national[:-4]}{tail}")
        if phonenumbers.is_valid_number(candidate):
            return phonenumbers.format_number(candidate, phonenumbers.PhoneNumberFormat.E164)


def seed_demo(credentials_file: Path, contacts: int = 36, seed: int = 7) -> list[tuple]:
    """Create the demo users and contacts; return (email, role, password) rows."""
    rng = random.Random(seed)
    logins = []
    users = {}
    for email, name, role, tz in DEMO_USERS:
        password = secrets.token_urlsafe(9)
        users[email] = create_user(
            email, name=name, role=role, password=password, timezone=tz, actor=None
        )
        logins.append((email, role, password))
    coaches = [u for u in users.values() if u.role == "coach"]
    tags = {name: Tag(name=name) for name in TAGS}
    db.session.add_all(tags.values())
    firsts, lasts = FIRST.split(), LAST.split()
    now = utcnow()
    for i in range(contacts):
        first, last = rng.choice(firsts), rng.choice(lasts)
        contact = Contact(
            name=f"{first} {last}",
            phone=demo_phone(rng, rng.choice(REGIONS)),
            email=f"{first}.{last}{i}@example.org".lower().replace("'", ""),
            status=rng.choices(("active", "inactive", "blocked"), (8, 2, 1))[0],
            owner=rng.choice(coaches + [None]),
            last_contact_at=now - timedelta(days=rng.randint(0, 90))
            if rng.random() < 0.8
            else None,
            tags=rng.sample(list(tags.values()), rng.randint(0, 3)),
        )
        db.session.add(contact)
        if rng.random() < 0.3:
            contact.notes.append(
                Note(body="Prefers morning sessions.", author=users["staff@example.com"])
            )
    db.session.flush()
    credentials_file.parent.mkdir(parents=True, exist_ok=True)
    credentials_file.write_text("".join(f"{e}\t{r}\t{p}\n" for e, r, p in logins))
    credentials_file.chmod(0o600)
    return logins


def has_users() -> bool:
    return db.session.execute(db.select(User.id).limit(1)).first() is not None
