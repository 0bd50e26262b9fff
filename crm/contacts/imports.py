"""CSV import of contacts: read the file, guess the mapping, plan and apply rows, revert.

The dry run and the real run go through one function, `process_chunk`, so they cannot
disagree: the dry run keeps the same in-memory bookkeeping (contacts matched or created
by earlier rows of the file) and only skips the writes. Services flush; callers commit.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import phonenumbers
import sqlalchemy as sa

from crm.audit.models import AuditEntry
from crm.audit.services import record_change
from crm.contacts.exports import safe_cell
from crm.contacts.listing import visible_contacts
from crm.contacts.models import STATUSES, Contact, ContactImport, ContactImportRow, Tag
from crm.contacts.services import normalize_phone
from crm.database import utcnow
from crm.extensions import db
from crm.users.models import User
from crm.validation import is_email

IMPORT_MAX_BYTES = 10 * 1024 * 1024
CHUNK_SIZE = 500
PREVIEW_ROWS = 500
SAMPLE_ROWS = 3
MAX_COLUMNS = 200

FIELDS = {
    "name": "Name",
    "first_name": "First name",
    "last_name": "Last name",
    "phone": "Phone",
    "email": "Email",
    "status": "Status",
    "tags": "Tags",
}
OUTCOMES = ("create", "update", "skip", "error")
CONTACT_FIELDS = ("name", "phone", "email", "status")

# Header spellings, compared with case and punctuation removed ("E-mail" -> "email").
HEADER_GUESSES = {
    "name": ("name", "fullname", "contactname", "contact", "clientname", "client"),
    "first_name": ("firstname", "first", "givenname", "forename"),
    "last_name": ("lastname", "last", "surname", "familyname"),
    "phone": (
        "phone",
        "phonenumber",
        "mobile",
        "mobilephone",
        "mobilenumber",
        "tel",
        "telephone",
        "cell",
        "cellphone",
    ),
    "email": ("email", "emailaddress", "mail"),
    "status": ("status",),
    "tags": ("tags", "tag", "labels", "label"),
}

# Encodings we name to the user; anything without a BOM that is not UTF-8 is Windows-1252.
ENCODING_LABELS = {
    "utf-8": "UTF-8",
    "utf-8-sig": "UTF-8 (with BOM)",
    "utf-16": "UTF-16",
    "windows-1252": "Windows-1252",
}


class ImportFileError(ValueError):
    """An uploaded file that cannot be imported, with a message for the person who sent it."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


# Reading the file.


def decode_content(content: bytes) -> tuple[str, str]:
    """Return the file's text and the encoding it was read with."""
    if content.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    elif content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        try:
            return content.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            encoding = "windows-1252"
    try:
        return content.decode(encoding), encoding
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            "This file could not be read as text (it is neither UTF-8, UTF-16 nor "
            "Windows-1252). Save it from your spreadsheet as “CSV UTF-8” and upload it again."
        ) from exc


def sniff_delimiter(text: str) -> str:
    """Pick comma, semicolon or tab: whichever the header line uses most."""
    first_line = text.split("\n", 1)[0]
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _records(text: str) -> Iterator[list[str]]:
    return csv.reader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(text))


def _blank(cells: list[str]) -> bool:
    return not any(cell.strip() for cell in cells)


def read_csv(content: bytes) -> tuple[str, list[str], int]:
    """Check an upload and return (encoding, headers, number of data rows).

    Raises ImportFileError with a message that says what is wrong and what to do.
    """
    if not content:
        raise ImportFileError(
            "The file is empty. Choose a CSV file with a header row and contacts."
        )
    if len(content) > IMPORT_MAX_BYTES:
        raise ImportFileError(
            f"The file is {len(content) / 1024 / 1024:.1f} MB; imports are limited to "
            f"{IMPORT_MAX_BYTES // 1024 // 1024} MB. Split it into smaller files."
        )
    text, encoding = decode_content(content)
    if "\x00" in text:
        raise ImportFileError(
            "This is not a CSV text file (it contains binary data). If it is a spreadsheet, "
            "use “Save as… CSV” and upload that."
        )
    # A stray control character is tolerated (they do occur in spreadsheet exports);
    # a sample full of them is binary data read as Windows-1252.
    sample = text[:65536]
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\t\r\n")
    if controls > max(8, len(sample) // 100):
        raise ImportFileError(
            "This does not look like a CSV file: it is full of control characters. "
            "Export your contacts as CSV and upload that."
        )
    try:
        records = _records(text)
        headers = next(records, None)
        if headers is None or _blank(headers):
            raise ImportFileError(
                "The file has no header row. The first line must name the columns "
                "(for example: name, phone, email)."
            )
        rows = sum(1 for cells in records if not _blank(cells))
    except csv.Error as exc:
        raise ImportFileError(
            "This does not look like a CSV file (a cell is far too long or a quote is never "
            "closed). Export your contacts as CSV and upload that."
        ) from exc
    if len(headers) > MAX_COLUMNS or any(len(h) > 200 for h in headers):
        raise ImportFileError(
            "The first line does not look like a header row (too many or too long columns). "
            "Export your contacts as CSV with column names on the first line."
        )
    if rows == 0:
        raise ImportFileError(
            "The file has a header row but no contacts. Add rows below the header."
        )
    return encoding, [h.strip() or f"Column {i + 1}" for i, h in enumerate(headers)], rows


def iter_rows(contact_import: ContactImport) -> Iterator[tuple[int, list[str]]]:
    """Yield (row number as a spreadsheet shows it, cells) for each non-blank data row."""
    text = contact_import.content.decode(contact_import.encoding)
    records = _records(text)
    next(records, None)  # the header row
    for number, cells in enumerate(records, start=2):
        if not _blank(cells):
            yield number, cells


def sample_rows(contact_import: ContactImport, count: int = SAMPLE_ROWS) -> list[list[str]]:
    """The first few data rows, to show under each column while mapping."""
    rows = []
    for _, cells in iter_rows(contact_import):
        rows.append(cells)
        if len(rows) == count:
            break
    return rows


def create_import(filename: str, content: bytes, *, region: str, actor: User) -> ContactImport:
    """Store an uploaded CSV with a mapping guessed from its headers."""
    encoding, headers, rows = read_csv(content)
    contact_import = ContactImport(
        actor_id=actor.id,
        filename=(filename or "upload.csv")[:255],
        content=content,
        encoding=encoding,
        headers=headers,
        mapping=guess_mapping(headers),
        region=region,
        total_rows=rows,
    )
    db.session.add(contact_import)
    db.session.flush()
    return contact_import


# The mapping.


def _header_key(header: str) -> str:
    return re.sub(r"[^0-9a-z]", "", header.casefold())


def guess_mapping(headers: list[str]) -> dict[str, str]:
    """Guess {column index: field} from the headers; the first column for a field wins."""
    mapping: dict[str, str] = {}
    for index, header in enumerate(headers):
        key = _header_key(header)
        for target, spellings in HEADER_GUESSES.items():
            if key in spellings and target not in mapping.values():
                mapping[str(index)] = target
                break
    # A full-name column makes first/last redundant; mapping both would be refused.
    if "name" in mapping.values():
        mapping = {k: v for k, v in mapping.items() if v not in ("first_name", "last_name")}
    return mapping


def mapping_errors(mapping: dict[str, str]) -> list[str]:
    """What is wrong with a mapping, in words; empty when it can run."""
    chosen = list(mapping.values())
    errors = []
    if "name" not in chosen and not {"first_name", "last_name"} & set(chosen):
        errors.append(
            "Choose the column that holds the name (or the first-name and last-name columns)."
        )
    if "name" in chosen and {"first_name", "last_name"} & set(chosen):
        errors.append("Choose either a name column or first/last-name columns, not both.")
    for target, label in FIELDS.items():
        if target != "tags" and chosen.count(target) > 1:
            errors.append(f"{label} is chosen for more than one column; keep one.")
    return errors


def read_mapping(form, headers: list[str]) -> dict[str, str]:
    """Read the mapping form: one `column-<index>` select per CSV column."""
    mapping = {}
    for index in range(len(headers)):
        value = form.get(f"column-{index}", "")
        if value in FIELDS:
            mapping[str(index)] = value
    return mapping


def valid_region(region: str) -> bool:
    return region in phonenumbers.SUPPORTED_REGIONS


def regions() -> list[str]:
    """Phone regions the user may choose as the default country."""
    return sorted(phonenumbers.SUPPORTED_REGIONS)


# Planning and applying rows.


@dataclass
class Target:
    """A contact as the import sees it: an existing one, or one an earlier row creates."""

    values: dict
    tags: set[str]  # lower-case tag names
    contact_id: int | None = None
    created_row: int | None = None  # the row of this file that creates it
    contact: Contact | None = None  # real run only, until the chunk is flushed

    def describe(self) -> str:
        if self.created_row is not None:
            return f"row {self.created_row} of this file"
        return f"{self.values['name']} (#{self.contact_id})"


@dataclass
class RowPlan:
    """What one row does, and why."""

    row_number: int
    cells: list[str]
    outcome: str
    message: str = ""
    target: Target | None = None
    changes: dict = field(default_factory=dict)  # {field: [old, new]}
    new_tags: list[str] = field(default_factory=list)
    values: dict = field(default_factory=dict)  # a created contact's values, as planned


def _shorten(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _split_tags(raw: str) -> list[str]:
    return [t.strip() for t in re.split(r"[,;]", raw) if t.strip()]


class ImportRun:
    """The bookkeeping of one pass over a file: earlier rows' contacts, tags, counters."""

    def __init__(self, contact_import: ContactImport, *, actor: User | None, dry_run: bool):
        self.contact_import = contact_import
        self.actor = actor
        self.dry_run = dry_run
        self.mapping = {int(k): v for k, v in contact_import.mapping.items()}
        self.columns = {t: sorted(i for i, v in self.mapping.items() if v == t) for t in FIELDS}
        self.headers = contact_import.headers
        self.region = contact_import.region
        self.on_match = contact_import.on_match
        self.by_phone: dict[str, Target] = {}
        self.by_email: dict[str, Target] = {}
        self.known_ids: set[int] = set()
        self.counts = dict.fromkeys(OUTCOMES, 0)
        # Tag names are unique as stored; matching ignores case and reuses the first.
        self.tag_names: dict[str, str] = {}
        self.tag_objects: dict[str, Tag] = {}
        for tag in db.session.execute(sa.select(Tag).order_by(Tag.id)).scalars():
            self.tag_names.setdefault(tag.name.casefold(), tag.name)
            if not dry_run:
                self.tag_objects.setdefault(tag.name.casefold(), tag)
        self._db_phone: dict[str, list[Contact]] = {}
        self._db_email: dict[str, list[Contact]] = {}
        self._phones: dict[str, tuple[str, str]] = {}  # raw -> (E.164, error), per chunk

    # Reading a row.

    def _cells_for(self, cells: list[str], target: str) -> list[tuple[str, str]]:
        """(header, stripped cell) of each column mapped to `target`."""
        return [
            (self.headers[i], cells[i].strip() if i < len(cells) else "")
            for i in self.columns[target]
        ]

    def _phone(self, raw: str) -> str:
        # Parsing is the costliest step per row; prefetch and planning share one result.
        if raw not in self._phones:
            try:
                self._phones[raw] = (normalize_phone(raw, self.region), "")
            except ValueError as exc:
                self._phones[raw] = ("", str(exc))
        e164, error = self._phones[raw]
        if error:
            raise ValueError(error)
        return e164

    def _read(self, cells: list[str]) -> tuple[dict, list[str], str | None]:
        """Clean values and tags of a row, or the reason it is rejected."""
        for index in self.mapping:
            cell = cells[index].strip() if index < len(cells) else ""
            if cell.startswith("="):
                return (
                    {},
                    [],
                    f"“{self.headers[index]}” holds a spreadsheet formula "
                    f"({_shorten(cell, 30)}); type the value itself.",
                )
        one = {t: (self._cells_for(cells, t) or [("", "")])[0][1] for t in FIELDS if t != "tags"}
        name = one["name"] or " ".join(p for p in (one["first_name"], one["last_name"]) if p)
        if not name:
            return {}, [], "The name is missing."
        if len(name) > 200:
            return {}, [], "The name is longer than 200 characters."
        values: dict = {"name": name}
        if one["phone"]:
            try:
                values["phone"] = self._phone(one["phone"])
            except ValueError as exc:
                return {}, [], f"Phone “{_shorten(one['phone'])}”: {exc}"
        if one["email"]:
            if not is_email(one["email"]) or len(one["email"]) > 320:
                return {}, [], f"“{_shorten(one['email'])}” is not a valid email address."
            values["email"] = one["email"].lower()
        if one["status"]:
            status = one["status"].lower()
            if status not in STATUSES:
                return (
                    {},
                    [],
                    f"Unknown status “{_shorten(one['status'])}”; use {', '.join(STATUSES)}.",
                )
            values["status"] = status
        tags: list[str] = []
        for _, raw in self._cells_for(cells, "tags"):
            for tag in _split_tags(raw):
                if len(tag) > 64:
                    return {}, [], f"The tag “{_shorten(tag)}” is longer than 64 characters."
                if tag.casefold() not in {t.casefold() for t in tags}:
                    tags.append(tag)
        return values, tags, None

    # Finding the contact a row matches.

    def prefetch(self, rows: list[tuple[int, list[str]]]) -> None:
        """Load, in one query, the existing contacts that this chunk's phones or emails match."""
        phones, emails = set(), set()
        self._phones = {}
        for _, cells in rows:
            for _, raw in self._cells_for(cells, "phone"):
                if raw:
                    try:
                        phones.add(self._phone(raw))
                    except ValueError:
                        pass  # the row is rejected with this error when it is planned
            for _, raw in self._cells_for(cells, "email"):
                if raw:
                    emails.add(raw.lower())
        self._db_phone, self._db_email = {}, {}
        if not phones and not emails:
            return
        conditions = []
        if phones:
            conditions.append(Contact.phone.in_(phones))
        if emails:
            conditions.append(Contact.email.in_(emails))
        if self.actor is not None:
            query = visible_contacts(self.actor)
        else:
            query = sa.select(Contact).where(Contact.deleted_at.is_(None))
        query = query.where(sa.or_(*conditions)).order_by(Contact.id)
        for contact in db.session.execute(query).unique().scalars():
            if contact.phone in phones:
                self._db_phone.setdefault(contact.phone, []).append(contact)
            if contact.email in emails:
                self._db_email.setdefault(contact.email, []).append(contact)

    def _register(self, target: Target) -> None:
        if target.values.get("phone"):
            self.by_phone.setdefault(target.values["phone"], target)
        if target.values.get("email"):
            self.by_email.setdefault(target.values["email"], target)

    def _find(self, key: str, cache: dict[str, Target], found: dict) -> Target | None:
        if key in cache:
            return cache[key]
        # Contacts the import already knows are matched through the cache, with the values
        # this run gave them, so the dry run and the real run see the same state.
        for contact in found.get(key, []):
            if contact.id not in self.known_ids:
                target = Target(
                    values={f: getattr(contact, f) for f in CONTACT_FIELDS},
                    tags={t.name.casefold() for t in contact.tags},
                    contact_id=contact.id,
                    contact=None if self.dry_run else contact,
                )
                self.known_ids.add(contact.id)
                self._register(target)
                return target
        return None

    def match(self, values: dict) -> tuple[Target | None, str]:
        """The contact this row matches, by phone first and then by email, and how."""
        if values.get("phone"):
            target = self._find(values["phone"], self.by_phone, self._db_phone)
            if target is not None:
                return target, "phone"
        if values.get("email"):
            target = self._find(values["email"], self.by_email, self._db_email)
            if target is not None:
                return target, "email"
        return None, ""

    # Deciding.

    def plan(self, row_number: int, cells: list[str]) -> RowPlan:
        """Decide what a row does and update the bookkeeping as if it were done."""
        values, tags, error = self._read(cells)
        if error:
            return RowPlan(row_number, cells, "error", error)
        target, by = self.match(values)
        if target is None:
            values = {"status": "active", "phone": None, "email": None, **values}
            target = Target(values=values, tags=set(), created_row=row_number)
            new_tags = [self._tag_name(t) for t in tags]
            target.tags = {t.casefold() for t in new_tags}
            self._register(target)
            return RowPlan(
                row_number, cells, "create", "", target, new_tags=new_tags, values=dict(values)
            )
        matched = f"Same {by} as {target.describe()}"
        if self.on_match == "skip":
            return RowPlan(row_number, cells, "skip", f"{matched}; matches are skipped.", target)
        changes = {
            f: [target.values.get(f), v] for f, v in values.items() if target.values.get(f) != v
        }
        new_tags = [self._tag_name(t) for t in tags if t.casefold() not in target.tags]
        if not changes and not new_tags:
            return RowPlan(row_number, cells, "skip", f"{matched}; already up to date.", target)
        for name, (_, new) in changes.items():
            old = target.values.get(name)
            target.values[name] = new
            cache = self.by_phone if name == "phone" else self.by_email
            if name in ("phone", "email"):
                if old and cache.get(old) is target:
                    del cache[old]
                cache.setdefault(new, target)
        target.tags |= {t.casefold() for t in new_tags}
        described = ", ".join(FIELDS[f].lower() for f in changes)
        if new_tags:
            described = ", ".join(p for p in (described, "tags") if p)
        return RowPlan(
            row_number,
            cells,
            "update",
            f"{matched}; updates {described}.",
            target,
            changes,
            new_tags,
        )

    def _tag_name(self, tag: str) -> str:
        # The first spelling seen, in the database or earlier in this file, is the one kept.
        return self.tag_names.setdefault(tag.casefold(), tag)

    # Applying (real run only).

    def _tag(self, name: str) -> Tag:
        key = name.casefold()
        if key not in self.tag_objects:
            tag = Tag(name=name)
            db.session.add(tag)
            self.tag_objects[key] = tag
        return self.tag_objects[key]

    def _contact(self, target: Target) -> Contact:
        if target.contact is None:
            target.contact = db.session.get(Contact, target.contact_id)
        return target.contact

    def apply(self, plan: RowPlan) -> dict | None:
        """Write a planned create or update; return what an update replaced."""
        if plan.outcome == "create":
            values = plan.values
            contact = Contact(
                name=values["name"],
                phone=values["phone"],
                email=values["email"],
                status=values["status"],
                tags=[self._tag(t) for t in plan.new_tags],
            )
            db.session.add(contact)
            plan.target.contact = contact
            return None
        if plan.outcome == "update":
            contact = self._contact(plan.target)
            before = {
                "values": {f: getattr(contact, f) for f in plan.changes},
                "wrote": {f: new for f, (_, new) in plan.changes.items()},
                "tags_added": plan.new_tags,
            }
            for name, (_, new) in plan.changes.items():
                setattr(contact, name, new)
            if plan.new_tags:
                contact.tags = [*contact.tags, *(self._tag(t) for t in plan.new_tags)]
            return before
        return None


def process_chunk(run: ImportRun, rows: list[tuple[int, list[str]]]) -> list[RowPlan]:
    """Plan a chunk of rows and, unless this is a dry run, write them with their audit."""
    run.prefetch(rows)
    plans, befores = [], []
    for number, cells in rows:
        plan = run.plan(number, cells)
        run.counts[plan.outcome] += 1
        plans.append(plan)
        # Applied row by row: a later row of the chunk may update what this one creates.
        if not run.dry_run:
            befores.append(run.apply(plan))
    if run.dry_run:
        return plans
    db.session.flush()
    import_rows, audits = [], []
    for plan, before in zip(plans, befores, strict=True):
        contact_id = None
        if plan.target is not None:
            if plan.target.contact is not None:
                plan.target.contact_id = plan.target.contact.id
            contact_id = plan.target.contact_id
            run.known_ids.add(contact_id)
        if plan.outcome == "create":
            changes = {f: [None, v] for f, v in plan.values.items() if v is not None}
            if plan.new_tags:
                changes["tags"] = [[], plan.new_tags]
            audits.append(("contact.created", contact_id, changes))
        elif plan.outcome == "update":
            changes = dict(plan.changes)
            if plan.new_tags:
                changes["tags"] = [[], plan.new_tags]
            audits.append(("contact.updated", contact_id, changes))
        import_rows.append(
            ContactImportRow(
                import_id=run.contact_import.id,
                row_number=plan.row_number,
                outcome=plan.outcome,
                contact_id=contact_id,
                message=plan.message or None,
                data=plan.cells,
                before=before,
            )
        )
    db.session.add_all(import_rows)
    db.session.flush()
    record_changes(audits, actor=run.actor)
    # Drop ORM objects: a 100k-row import must not keep every contact in memory.
    for plan in plans:
        if plan.target is not None:
            plan.target.contact = None
    return plans


def record_changes(entries: list[tuple[str, int, dict]], *, actor: User | None) -> None:
    """Audit many contacts at once: (action, contact id, {field: [old, new]}) each.

    The same entries as `record_change` writes, in one INSERT per chunk rather than one
    flush per contact (as bulk actions do): a 100k-row import would otherwise spend most
    of its time on audit round trips.
    """
    if not entries:
        return
    now = utcnow()
    db.session.execute(
        sa.insert(AuditEntry),
        [
            {
                "actor_id": actor.id if actor is not None else None,
                "action": action,
                "object_type": "contact",
                "object_id": object_id,
                "changes": changes,
                "created_at": now,
            }
            for action, object_id, changes in entries
        ],
    )


def chunked(rows: Iterable, size: int = CHUNK_SIZE) -> Iterator[list]:
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class DryRun:
    counts: dict[str, int]
    rows: list[RowPlan]
    total: int

    @property
    def truncated(self) -> bool:
        return self.total > len(self.rows)


def dry_run(contact_import: ContactImport, *, actor: User) -> DryRun:
    """Plan every row without writing: counts per outcome and the first rows in detail."""
    run = ImportRun(contact_import, actor=actor, dry_run=True)
    shown: list[RowPlan] = []
    total = 0
    for rows in chunked(iter_rows(contact_import)):
        plans = process_chunk(run, rows)
        total += len(plans)
        shown.extend(plans[: PREVIEW_ROWS - len(shown)])
    return DryRun(run.counts, shown, total)


def start_import(contact_import: ContactImport, *, actor: User) -> None:
    """Queue an import whose mapping is valid; the caller enqueues the job after commit."""
    contact_import.status = "queued"
    contact_import.processed_rows = 0
    contact_import.error = None
    db.session.flush()
    record_change(
        "contact_import.queued",
        "contact_import",
        contact_import.id,
        {"status": ["mapping", "queued"]},
        actor=actor,
    )


# Revert.


def revert_import(contact_import: ContactImport, *, actor: User) -> list[str]:
    """Undo a finished import; return the conflicts that were left as they are.

    Contacts it created go to the trash (soft delete, so they can still be restored).
    Contacts it updated get their earlier values back, field by field, only where the
    current value is still the one the import wrote; later edits win and are reported.
    """
    conflicts: list[str] = []
    rows = db.session.execute(
        sa.select(ContactImportRow)
        .where(
            ContactImportRow.import_id == contact_import.id,
            ContactImportRow.outcome.in_(("create", "update")),
            ContactImportRow.contact_id.is_not(None),
        )
        .order_by(ContactImportRow.row_number.desc())
    ).scalars()
    created, updates = [], []
    for row in rows:
        (created if row.outcome == "create" else updates).append(row)
    created_ids = {row.contact_id for row in created}
    now = utcnow()
    for batch in chunked([r for r in updates if r.contact_id not in created_ids]):
        contacts = _load(r.contact_id for r in batch)
        audits = []
        for row in batch:
            contact = contacts.get(row.contact_id)
            if contact is None or not row.before:
                conflicts.append(f"Row {row.row_number}: the contact no longer exists.")
                continue
            changes, kept = _restore(contact, row.before)
            conflicts += [
                f"{contact.name} (#{contact.id}): {FIELDS[name].lower()} was changed after "
                "the import, so it was kept."
                for name in kept
            ]
            if changes:
                audits.append((contact.id, changes))
        db.session.flush()
        record_changes(
            [("contact.updated", contact_id, changes) for contact_id, changes in audits],
            actor=actor,
        )
    for batch in chunked(created):
        contacts = _load(r.contact_id for r in batch)
        trashed = [c for c in contacts.values() if c.deleted_at is None]
        for contact in trashed:
            contact.deleted_at = now
        db.session.flush()
        record_changes(
            [("contact.deleted", c.id, {"deleted_at": [None, now.isoformat()]}) for c in trashed],
            actor=actor,
        )
    contact_import.status = "reverted"
    contact_import.reverted_at = now
    db.session.flush()
    record_change(
        "contact_import.reverted",
        "contact_import",
        contact_import.id,
        {"status": ["done", "reverted"], "conflicts": len(conflicts)},
        actor=actor,
    )
    return conflicts


def _restore(contact: Contact, before: dict) -> tuple[dict, list[str]]:
    """Put back what one update replaced; return the changes and the fields edited since."""
    changes, kept = {}, []
    for name, old in before["values"].items():
        current = getattr(contact, name)
        if current != before["wrote"][name]:
            kept.append(name)
        elif current != old:
            changes[name] = [current, old]
            setattr(contact, name, old)
    added = {t.casefold() for t in before.get("tags_added", [])}
    removed = [t.name for t in contact.tags if t.name.casefold() in added]
    if removed:
        contact.tags = [t for t in contact.tags if t.name.casefold() not in added]
        changes["tags"] = [removed, []]
    return changes, kept


def _load(ids: Iterable[int]) -> dict[int, Contact]:
    query = sa.select(Contact).where(Contact.id.in_(set(ids)))
    return {c.id: c for c in db.session.execute(query).unique().scalars()}


# The rejected rows.


def rejected_csv(contact_import: ContactImport) -> str:
    """The rows that were rejected, as CSV: the original columns plus an `error` column."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([safe_cell(h) for h in contact_import.headers] + ["error"])
    query = (
        sa.select(ContactImportRow)
        .where(ContactImportRow.import_id == contact_import.id, ContactImportRow.outcome == "error")
        .order_by(ContactImportRow.row_number)
        .execution_options(yield_per=1000)
    )
    width = len(contact_import.headers)
    for row in db.session.execute(query).scalars():
        cells = list(row.data) + [""] * (width - len(row.data))
        writer.writerow([safe_cell(c) for c in cells] + [safe_cell(row.message or "")])
    return out.getvalue()
