"""Seed data: demo users and contacts for a fresh install; many realistic contacts, fast."""

from __future__ import annotations

import random
import secrets
import unicodedata
from datetime import timedelta
from pathlib import Path

import phonenumbers

from crm.contacts import cache
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
    seed_demo_conversations(rng, now)
    seed_demo_bookings(rng, now, coaches)
    credentials_file.parent.mkdir(parents=True, exist_ok=True)
    credentials_file.write_text("".join(f"{e}\t{r}\t{p}\n" for e, r, p in logins))
    credentials_file.chmod(0o600)
    return logins


DEMO_TEMPLATES = (
    ("Session reminder", "Hi {{first_name}}, a reminder of our session tomorrow. See you then!"),
    ("Welcome", "Welcome, {{first_name}}! I'm {{coach_name}}, your coach. Reply here any time."),
)
DEMO_THREAD = (
    ("inbound", "Hi! Can we move Thursday's session to the afternoon?"),
    ("outbound", "Of course. Would 3 pm work for you?"),
    ("inbound", "3 pm is perfect, thanks!"),
)


def seed_demo_conversations(rng: random.Random, now) -> None:
    """A few SMS threads with read, delivered and unread messages, and two templates."""
    from crm.conversations.models import (
        Conversation,
        Message,
        MessageStatusEvent,
        MessageTemplate,
    )

    db.session.add_all(MessageTemplate(name=n, body=b) for n, b in DEMO_TEMPLATES)
    contacts = db.session.scalars(
        db.select(Contact).where(Contact.phone.is_not(None)).order_by(Contact.id).limit(4)
    ).all()
    for n, contact in enumerate(contacts):
        started = now - timedelta(hours=6 * (n + 1))
        thread = DEMO_THREAD[: 3 if n % 2 == 0 else 2]
        conversation = Conversation(
            contact_id=contact.id,
            channel="sms",
            assignee_id=contact.owner_id,
            status="open",
            unread_count=1 if thread[-1][0] == "inbound" else 0,
            last_activity_at=started + timedelta(minutes=10 * len(thread)),
            last_message_preview=thread[-1][1],
            last_inbound_at=started,
        )
        db.session.add(conversation)
        db.session.flush()
        for i, (direction, body) in enumerate(thread):
            at = started + timedelta(minutes=10 * (i + 1))
            status = "received" if direction == "inbound" else "delivered"
            message = Message(
                conversation_id=conversation.id,
                contact_id=contact.id,
                direction=direction,
                channel="sms",
                body=body,
                status=status,
                sid=f"SMdemo{conversation.id:04d}{i:02d}{rng.getrandbits(64):016x}",
                sender_id=contact.owner_id if direction == "outbound" else None,
                sent_at=at,
                created_at=at,
            )
            db.session.add(message)
            db.session.flush()
            statuses = ["received"] if direction == "inbound" else ["queued", "sent", "delivered"]
            db.session.add_all(
                MessageStatusEvent(message_id=message.id, status=s, at=at, source="demo")
                for s in statuses
            )
            if direction == "inbound":
                conversation.last_inbound_at = at


DEMO_SERVICES = (("Discovery call", 30, 0), ("Coaching session", 60, 9000))


def seed_demo_bookings(rng: random.Random, now, coaches: list) -> None:
    """Two services and, per coach, a week of past and upcoming sessions with their clients.

    Rows are written directly, without workflow steps: the demo should not start by
    texting confirmations for sessions it made up.
    """
    from crm.bookings.models import Booking, BookingEvent, CoachProfile, Service

    services = [
        Service(name=name, duration_minutes=minutes, price_minor=price or None, currency="usd")
        for name, minutes, price in DEMO_SERVICES
    ]
    db.session.add_all(services)
    for coach in coaches:
        db.session.add(
            CoachProfile(
                user_id=coach.id,
                meeting_link=f"https://meet.example.com/{coach.email.split('@')[0]}",
            )
        )
    db.session.flush()
    today = now.replace(minute=0, second=0, microsecond=0)
    for coach in coaches:
        clients = db.session.scalars(
            db.select(Contact).where(Contact.owner_id == coach.id).order_by(Contact.id).limit(6)
        ).all()
        for n, contact in enumerate(clients):
            service = services[n % 2]
            start = today + timedelta(days=n - 2, hours=rng.choice((1, 3, 5)))
            past = start < now
            booking = Booking(
                contact_id=contact.id,
                coach_id=coach.id,
                service_id=service.id,
                start_at=start,
                end_at=start + timedelta(minutes=service.duration_minutes),
                status=("completed" if n % 3 else "no_show") if past else "scheduled",
                source="manual",
                meeting_url=f"https://meet.example.com/{coach.email.split('@')[0]}",
                payment_status="unpaid" if service.price_minor else "none",
            )
            db.session.add(booking)
            db.session.flush()
            db.session.add(
                BookingEvent(
                    booking_id=booking.id,
                    contact_id=contact.id,
                    kind="booked",
                    at=start - timedelta(days=3),
                    data={"start_at": start.isoformat()},
                )
            )


def has_users() -> bool:
    return db.session.execute(db.select(User.id).limit(1)).first() is not None


# Benchmark seeding: many realistic contacts, fast. Rows go in with Core executemany (or
# COPY on PostgreSQL) in large chunks inside the caller's transaction, never as ORM objects.

SEED_CHUNK = 50_000
SEED_COACHES = (
    ("Grace Coach", "America/Chicago"),
    ("Hiro Coach", "Asia/Tokyo"),
    ("Lena Coach", "Europe/Berlin"),
    ("Marco Coach", "Europe/Madrid"),
    ("Tari Coach", "Australia/Sydney"),
)
SEED_TAGS = (
    "vip", "new-client", "lead", "alumni", "follow-up", "package-10", "package-20",
    "online", "in-person", "referral", "newsletter", "corporate", "student", "nutrition",
    "strength", "yoga", "running", "rehab", "paused", "trial",
)  # fmt: skip
EMAIL_DOMAINS = (
    "gmail.com", "gmail.com", "gmail.com", "outlook.com", "yahoo.com", "icloud.com",
    "proton.me", "hotmail.com", "web.de", "orange.fr", "example.org", "mail.com",
)  # fmt: skip
# (weight, phone regions, first names, last names); a region repeated is more likely.
CULTURES = (
    (
        24,
        "US US US US GB GB AU",
        "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William "
        "Barbara Richard Susan Joseph Jessica Thomas Sarah Charles Karen Emily Jack Olivia "
        "Harry Isla Oliver Amelia Noah Ava Liam Chloe Mason Grace Ethan Ruby Logan Zoe",
        "Smith Johnson Williams Brown Jones Miller Davis Wilson Anderson Taylor Thomas Moore "
        "Martin Jackson Thompson White Harris Clark Lewis Walker Hall Young King Wright Scott "
        "Green Baker Adams Nelson Hill Campbell Mitchell Roberts Carter O'Brien Murphy Kelly",
    ),
    (
        14,
        "ES ES ES US US BR",
        "José María Antonio Carmen Manuel Lucía Francisco Sofía Javier Martina Alejandro Paula "
        "Daniel Valeria Pablo Elena Sergio Julia Diego Camila Mateo Ximena Santiago Andrea",
        "García Rodríguez González Fernández López Martínez Sánchez Pérez Gómez Martín Jiménez "
        "Ruiz Hernández Díaz Moreno Muñoz Álvarez Romero Navarro Torres Domínguez Vázquez",
    ),
    (
        9,
        "DE DE DE DE FR",
        "Lukas Anna Leon Marie Finn Sophie Jonas Lena Paul Hannah Felix Lea Maximilian Laura "
        "Jan Katharina Tobias Johanna Niklas Greta Moritz Clara Jürgen Birgit",
        "Müller Schmidt Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Schäfer "
        "Koch Bauer Richter Klein Wolf Schröder Neumann Schwarz Zimmermann Braun Krüger",
    ),
    (
        9,
        "FR FR FR FR DE ES",
        "Gabriel Louise Raphaël Jade Léo Ambre Louis Alice Arthur Lina Jules Chloé Hugo Léa "
        "Adam Manon Nathan Inès Théo Camille Étienne Margaux Antoine Éloïse",
        "Martin Bernard Dubois Thomas Robert Richard Petit Durand Leroy Moreau Simon Laurent "
        "Lefebvre Michel Garcia David Bertrand Roux Vincent Fournier Morel Girard Bonnet",
    ),
    (
        10,
        "BR BR BR BR US",
        "João Ana Pedro Beatriz Gustavo Larissa Rafael Mariana Thiago Gabriela Lucas Fernanda "
        "Matheus Juliana Bruno Letícia Caio Isabela Vinícius Bianca Enzo Yasmin",
        "Silva Santos Oliveira Souza Rodrigues Ferreira Alves Pereira Lima Gomes Costa Ribeiro "
        "Martins Carvalho Almeida Lopes Soares Fernandes Vieira Barbosa Rocha Araújo",
    ),
    (
        12,
        "IN IN IN IN GB US AU",
        "Aarav Priya Vivaan Ananya Aditya Diya Arjun Isha Sai Kavya Rohan Meera Vihaan Saanvi "
        "Krishna Aadhya Ishaan Pooja Rahul Neha Vikram Lakshmi Sanjay Deepika",
        "Sharma Verma Gupta Patel Singh Kumar Reddy Iyer Nair Menon Das Bose Chatterjee "
        "Mukherjee Rao Joshi Desai Mehta Shah Kapoor Malhotra Pillai Agarwal Banerjee",
    ),
    (
        8,
        "US US AU AU GB",
        "Wei Mei Jun Xin Hiroshi Yuki Haruto Sakura Min-jun Seo-yeon Ji-ho Ha-eun Minh Linh "
        "Tuan Thao Kenji Aiko Hao Yan Sora Hana",
        "Wang Li Zhang Liu Chen Yang Huang Zhao Wu Zhou Sato Suzuki Takahashi Tanaka Watanabe "
        "Kim Lee Park Choi Nguyen Tran Pham Le",
    ),
    (
        7,
        "GB GB US FR",
        "Chinedu Ngozi Oluwaseun Adaeze Emeka Folake Kwame Ama Kofi Abena Tunde Yetunde "
        "Chiamaka Ikenna Femi Zainab Sipho Thandiwe Amara Kelechi",
        "Okafor Adeyemi Okonkwo Mensah Boateng Nwosu Eze Balogun Oyelaran Asante Owusu Obi "
        "Adebayo Chukwu Danjuma Nkosi Mbeki Abiodun Oduya Achebe",
    ),
    (
        7,
        "FR DE DE GB ES",
        "Mohammed Fatima Ahmed Aisha Omar Layla Youssef Mariam Ali Nour Hassan Salma Karim "
        "Yasmin Tariq Leila Samir Rania Bilal Huda",
        "Haddad Khalil Nasser Hamdan Mansour Saleh Aziz Rahman Farouk Bakr Qureshi Hussein "
        "Haddadi Ibrahim Sabbagh Yousef Darwish Khoury Najjar Amari",
    ),
)


def _ascii(word: str) -> str:
    """Fold a name into the lower-case ASCII an email address would use."""
    folded = unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode()
    return "".join(ch for ch in folded.lower() if ch.isalnum())


def phone_prefixes(rng: random.Random, region: str, *, tail: int = 5, want: int = 30):
    """Leading digits (E.164, '+' included) after which any `tail` digits make a valid number.

    phonenumbers decides validity by the leading digits and the length, so a prefix whose
    sampled completions all validate is taken as valid for every completion; the tests
    check every generated number.
    """
    found: list[str] = []
    kinds = (
        (phonenumbers.PhoneNumberType.MOBILE, want),
        (phonenumbers.PhoneNumberType.FIXED_LINE, want // 3),
    )
    for kind, wanted in kinds:
        example = phonenumbers.example_number_for_type(region, kind)
        national = str(example.national_number)
        size = len(national) - tail
        mine: set[str] = set()
        for _ in range(wanted * 100):
            if len(mine) >= wanted:
                break
            # Keep the example's first digit: it is what separates mobiles from landlines.
            prefix = national[:1] + "".join(rng.choice("0123456789") for _ in range(size - 1))
            full = f"+{example.country_code}{prefix}"
            if full in mine:
                continue
            samples = (
                phonenumbers.parse(f"{full}{rng.randrange(10**tail):0{tail}d}") for _ in range(12)
            )
            if all(phonenumbers.is_valid_number_for_region(n, region) for n in samples):
                mine.add(full)
        found += sorted(mine) * (3 if kind == phonenumbers.PhoneNumberType.MOBILE else 1)
    return found


def _seed_owners() -> list[int]:
    """Ids of the active coaches; create a few (Google-only, no password) when there are none."""
    query = db.select(User.id).filter_by(role="coach", active=True).order_by(User.id)
    ids = list(db.session.execute(query).scalars())
    if ids:
        return ids
    for n, (name, tz) in enumerate(SEED_COACHES, start=1):
        email = f"seed.coach{n}@example.com"
        if db.session.execute(db.select(User.id).filter_by(email=email)).first():
            continue
        ids.append(create_user(email, name=name, role="coach", timezone=tz, actor=None).id)
    if not ids:
        raise RuntimeError("no active coach, and the seed coaches' emails are taken")
    return ids


def _seed_tags() -> list[int]:
    """Ids of the seed tags, creating those that do not exist."""
    existing = dict(
        db.session.execute(db.select(Tag.name, Tag.id).where(Tag.name.in_(SEED_TAGS))).all()
    )
    missing = [Tag(name=name) for name in SEED_TAGS if name not in existing]
    db.session.add_all(missing)
    db.session.flush()
    return [*existing.values(), *(tag.id for tag in missing)]


def _generate(rng: random.Random, first_id: int, count: int, owners: list[int], tags: list[int]):
    """Yield (contact rows, contact_tags rows) in chunks; datetimes as naive UTC text."""
    culture_pool = []
    prefixes: dict[str, list[str]] = {}
    for weight, regions, firsts, lasts in CULTURES:
        regions = regions.split()
        for region in regions:
            if region not in prefixes:
                prefixes[region] = phone_prefixes(rng, region)
        culture = (
            [(name, _ascii(name)) for name in firsts.split()],
            [(name, _ascii(name)) for name in lasts.split()],
            [prefixes[r] for r in regions],
        )
        culture_pool += [culture] * weight
    statuses = ["active"] * 16 + ["inactive"] * 3 + ["blocked"]
    owner_pool = owners * 9 + [None] * max(1, len(owners) // 2)
    # Drawing from a pool of tag sets is much cheaper than rng.sample per contact.
    tag_counts = (0, 0, 0, 1, 1, 1, 1, 2, 2, 3)
    tag_sets = [rng.sample(tags, rng.choice(tag_counts)) for _ in range(4096)]
    choice, rand, randrange = rng.choice, rng.random, rng.randrange
    # Datetimes as SQLAlchemy writes them on SQLite (microseconds always present, so that
    # text comparison orders them): a day string and a time-of-day string, precomputed.
    today = utcnow().date()
    span_days = 3 * 365
    days = [(today - timedelta(days=n)).isoformat() + " " for n in range(span_days + 1)]
    times = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.000000" for s in range(86400)]
    recent = 2 * 365 * 86400
    end = span_days * 86400  # seconds from the oldest day to today's midnight
    rows, links = [], []
    append, extend = rows.append, links.extend
    for contact_id in range(first_id, first_id + count):
        firsts, lasts, phone_pools = choice(culture_pool)
        first, first_ascii = choice(firsts)
        # One in five carries a surname from another culture, as in any mixed population
        # (and as a list sorted by name must expect: surnames do not run in blocks).
        last, last_ascii = choice(lasts if rand() >= 0.2 else choice(culture_pool)[1])
        roll = rand()
        phone = None if roll < 0.07 else f"{choice(choice(phone_pools))}{randrange(100000):05d}"
        if roll > 0.9:
            email = None
        else:
            style = randrange(4)
            if style == 0:
                local = f"{first_ascii}.{last_ascii}{contact_id}"
            elif style == 1:
                local = f"{first_ascii[0]}{last_ascii}{contact_id}"
            elif style == 2:
                local = f"{first_ascii}_{contact_id}"
            else:
                local = f"{last_ascii}.{first_ascii}.{contact_id}"
            email = f"{local}@{choice(EMAIL_DOMAINS)}"
        # Seconds since the oldest day, growing with the id as a real list grows (the list's
        # "newest first" is id order); contacted (or not) some time after being created.
        slot = (contact_id - first_id) * end // count
        created = slot + randrange(max(1, (contact_id - first_id + 1) * end // count - slot))
        day, second = divmod(created, 86400)
        created_at = days[span_days - day] + times[second]
        if rand() < 0.2:
            last_contact_at, updated_at = None, created_at
        else:
            start = max(created, end - recent)
            day, second = divmod(start + randrange(end - start), 86400)
            last_contact_at = updated_at = days[span_days - day] + times[second]
        append(
            (
                contact_id,
                f"{first} {last}",
                phone,
                email,
                choice(statuses),
                choice(owner_pool),
                last_contact_at,
                created_at,
                updated_at,
            )
        )
        tag_set = choice(tag_sets)
        if tag_set:
            extend([(contact_id, tag_id) for tag_id in tag_set])
        if len(rows) >= SEED_CHUNK:
            yield rows, links
            rows, links = [], []
            append, extend = rows.append, links.extend
    if rows:
        yield rows, links


CONTACT_COLUMNS = (
    "id, name, phone, email, status, owner_id, last_contact_at, created_at, updated_at"
)


def seed_contacts(count: int, *, rng_seed: int | None = None) -> int:
    """Add `count` realistic contacts in the session's transaction; return how many.

    Names from several cultures, phones valid in eight regions, lower-case emails,
    weighted statuses, 0-3 of twenty tags, owners among the active coaches. Appends to
    whatever is there. Flushes, never commits.
    """
    if count <= 0:
        return 0
    rng = random.Random(rng_seed)
    owners = _seed_owners()
    tags = _seed_tags()
    connection = db.session.connection()
    cache.mark_changed(db.session())
    if connection.dialect.name == "postgresql":
        _seed_postgresql(connection, rng, count, owners, tags)
    else:
        _seed_sqlite(connection, rng, count, owners, tags)
    return count


def refresh_statistics() -> None:
    """After a large seed on PostgreSQL, do now what autovacuum would do later: set the
    visibility map, so that index-only scans skip the table (search reads the covering
    name index). It needs its own connection outside any transaction, so it runs after
    the commit. SQLite has no visibility map."""
    engine = db.engine
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM (ANALYZE) contacts, contact_tags")


def _seed_sqlite(connection, rng, count, owners, tags) -> None:
    existing, last_id = connection.exec_driver_sql(
        "SELECT count(*), coalesce(max(id), 0) FROM contacts"
    ).one()
    first_id = last_id + 1
    # Per-row FTS triggers cost more than indexing the new rows in one statement, so they
    # are lifted for the insert and put back from their own saved DDL. DDL is
    # transactional on SQLite: a failed seed rolls back to the triggers as they were.
    triggers = connection.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
        "AND tbl_name = 'contacts' AND name LIKE 'contacts_fts_%'"
    ).all()
    # Building a B-tree once from all keys is several times faster than growing it row by
    # row, but it covers the old rows too: worth it only when the seed at least doubles
    # the table.
    indexes = []
    if count >= existing:
        indexes = connection.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name = 'contacts' AND sql IS NOT NULL"
        ).all()
    for name, _ in triggers:
        connection.exec_driver_sql(f'DROP TRIGGER "{name}"')
    for name, _ in indexes:
        connection.exec_driver_sql(f'DROP INDEX "{name}"')
    insert_contacts = f"INSERT INTO contacts ({CONTACT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    insert_links = "INSERT INTO contact_tags (contact_id, tag_id) VALUES (?, ?)"
    for rows, links in _generate(rng, first_id, count, owners, tags):
        connection.exec_driver_sql(insert_contacts, rows)
        if links:
            connection.exec_driver_sql(insert_links, links)
    for _, sql in indexes:
        connection.exec_driver_sql(sql)
    if triggers:
        # What the insert trigger would have done, for the new rows only.
        connection.exec_driver_sql(
            "INSERT INTO contacts_fts(rowid, name, email, phone) "
            "SELECT id, name, email, phone FROM contacts WHERE id >= ?",
            (first_id,),
        )
        for _, sql in triggers:
            connection.exec_driver_sql(sql)


def _seed_postgresql(connection, rng, count, owners, tags) -> None:
    # Explicit ids let the tag links be written without reading ids back; the lock keeps
    # other writers from taking those ids meanwhile (readers are not blocked).
    connection.exec_driver_sql("LOCK TABLE contacts IN SHARE ROW EXCLUSIVE MODE")
    existing, last_id = connection.exec_driver_sql(
        "SELECT count(*), coalesce(max(id), 0) FROM contacts"
    ).one()
    first_id = last_id + 1
    # An index built once is far cheaper than one updated per row (the GIN trigram index
    # above all), but it covers the old rows too: worth it only when the seed at least
    # doubles the table. DDL is transactional: a failed seed rolls back to the indexes.
    indexes = []
    if count >= existing:
        indexes = connection.exec_driver_sql(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'contacts'::regclass AND NOT i.indisprimary AND NOT i.indisunique"
        ).all()
        for name, _ in indexes:
            connection.exec_driver_sql(f'DROP INDEX "{name}"')
    driver = connection.connection.driver_connection
    with driver.cursor() as cursor:
        for rows, links in _generate(rng, first_id, count, owners, tags):
            with cursor.copy(f"COPY contacts ({CONTACT_COLUMNS}) FROM STDIN") as copy:
                copy.write("".join(map(_copy_line, rows)))
            if links:
                with cursor.copy("COPY contact_tags (contact_id, tag_id) FROM STDIN") as copy:
                    copy.write("".join(f"{c}\t{t}\n" for c, t in links))
    if indexes:
        connection.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
        for _, sql in indexes:
            connection.exec_driver_sql(sql)
    connection.exec_driver_sql(
        "SELECT setval(pg_get_serial_sequence('contacts', 'id'), %(last)s)",
        {"last": first_id + count - 1},
    )
    if indexes:
        # Fresh statistics, so that the planner sees the table's new size at once.
        connection.exec_driver_sql("ANALYZE contacts")
        connection.exec_driver_sql("ANALYZE contact_tags")


def _copy_line(row: tuple) -> str:
    """One contacts row in COPY text format; the generated values hold no tabs or backslashes."""
    null = "\\N"
    contact_id, name, phone, email, status, owner_id, last_contact_at, created_at, updated_at = row
    last = f"{last_contact_at}+00" if last_contact_at else null
    owner = null if owner_id is None else owner_id
    return (
        f"{contact_id}\t{name}\t{phone or null}\t{email or null}\t{status}\t{owner}\t"
        f"{last}\t{created_at}+00\t{updated_at}+00\n"
    )
