"""CSV import: upload checks, mapping, dry run, the real run through a worker, result, revert."""

from __future__ import annotations

import csv
import io
import re

import pytest
from rq import SimpleWorker
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from crm.audit.models import AuditEntry
from crm.contacts.models import Contact, ContactImport, ContactImportRow, Tag
from crm.redis_client import get_redis
from jobs import get_queue

PLAN_ROW_RE = re.compile(r'id="plan-row-(\d+)" data-outcome="(\w+)"')


def upload(client, content: bytes, filename: str = "contacts.csv"):
    # Encoded in memory: the test client would spool a large body to a file it never closes.
    file = FileStorage(io.BytesIO(content), filename=filename, content_type="text/csv")
    fields = {"csrf_token": client.csrf_token(), "file": file}
    boundary, body = encode_multipart(fields)
    return client.post(
        "/contacts/import", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )


def uploaded(client, db, content: bytes, filename: str = "contacts.csv") -> ContactImport:
    response = upload(client, content, filename)
    assert response.status_code == 303, response.get_data(as_text=True)
    import_id = int(response.headers["Location"].rsplit("/", 1)[1])
    assert response.headers["Location"] == f"/contacts/import/{import_id}"
    return db.session.get(ContactImport, import_id)


def mapping_form(imp: ContactImport, mapping: dict[int, str] | None = None, **options) -> dict:
    chosen = {int(k): v for k, v in imp.mapping.items()} if mapping is None else mapping
    form = {f"column-{i}": chosen.get(i, "") for i in range(len(imp.headers))}
    form.update({"on_match": "update", "region": "US", **options})
    return form


def preview(client, imp: ContactImport, *, htmx: bool = False, **kwargs):
    return client.form(f"/contacts/import/{imp.id}/preview", mapping_form(imp, **kwargs), htmx=htmx)


def plan_outcomes(body: str) -> dict[int, str]:
    return {int(n): outcome for n, outcome in PLAN_ROW_RE.findall(body)}


def run_worker() -> None:
    SimpleWorker([get_queue("default")], connection=get_redis()).work(burst=True)


def run(client, db, imp: ContactImport) -> ContactImport:
    response = client.form(f"/contacts/import/{imp.id}/run")
    assert response.status_code == 303
    assert response.headers["Location"] == f"/contacts/import/{imp.id}"
    run_worker()
    db.session.expire_all()
    return db.session.get(ContactImport, imp.id)


def contact_named(db, name: str) -> Contact | None:
    db.session.expire_all()
    return db.session.execute(db.select(Contact).filter_by(name=name)).scalar_one_or_none()


def count(db, model) -> int:
    return db.session.execute(db.select(db.func.count()).select_from(model)).scalar_one()


# Upload and mapping.


def test_headers_are_guessed_and_shown_selected(client, login_as, db):
    login_as("staff")
    imp = uploaded(
        client,
        db,
        b"Full Name;Mobile;E-mail;Labels;Notes;STATUS\nAna Lima;4155552671;a@x.org;vip;hi;active\n",
    )
    assert imp.mapping == {"0": "name", "1": "phone", "2": "email", "3": "tags", "5": "status"}
    assert imp.total_rows == 1
    body = client.get(f"/contacts/import/{imp.id}").get_data(as_text=True)
    assert re.search(r'name="column-1".*?<option value="phone" selected>', body, re.S)
    assert re.search(r'name="column-4".*?<option value="" *>Ignore', body, re.S)
    assert "Ana Lima" in body  # a sample row under the columns


def test_first_and_last_name_headers_are_guessed(client, login_as, db):
    login_as("staff")
    imp = uploaded(client, db, b"First_Name,last name,Tel,email address\nAna,Lima,,\n")
    assert imp.mapping == {"0": "first_name", "1": "last_name", "2": "phone", "3": "email"}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "The file is empty"),
        (b"name,phone\n", "has a header row but no contacts"),
        (b"name,phone\r\n,\r\n\r\n", "has a header row but no contacts"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "contains binary data"),
        (bytes(range(1, 9)) * 40 + b"\n", "not look like a CSV file"),
        (b"name\n" + b"x" * 200_000 + b"\n", "not look like a CSV file"),
    ],
    ids=["empty", "header-only", "header-and-blank-lines", "binary", "control-chars", "huge-cell"],
)
def test_bad_files_get_a_clear_message_and_nothing_is_stored(
    client, login_as, db, content, message
):
    login_as("staff")
    response = upload(client, content)
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert message in body
    assert 'id="import-upload"' in body  # the form is there to try again
    assert count(db, ContactImport) == 0


@pytest.mark.parametrize("htmx", [False, True])
def test_no_file_chosen(client, login_as, db, htmx):
    login_as("staff")
    response = client.form("/contacts/import", {}, htmx=htmx)
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert "Choose a CSV file to upload." in body
    assert ("<html" in body) is not htmx
    assert 'id="import-upload"' in body


def test_ten_megabytes_of_garbage_is_refused_by_size(client, login_as, db):
    login_as("staff")
    garbage = bytes(range(256)) * (10 * 1024 * 1024 // 256) + b"more"
    response = upload(client, garbage)
    assert response.status_code == 422
    assert "imports are limited to 10 MB" in response.get_data(as_text=True)
    assert count(db, ContactImport) == 0


@pytest.mark.parametrize(
    "content, encoding, label",
    [
        ("name,phone\nJosé Müller,4155552671\n".encode(), "utf-8", "UTF-8"),
        ("\ufeffname,phone\nJosé Müller,4155552671\n".encode(), "utf-8-sig", "UTF-8 (with BOM)"),
        ("\ufeffname\tphone\nJosé Müller\t4155552671\n".encode("utf-16-le"), "utf-16", "UTF-16"),
        ("name;phone\nJosé Müller;4155552671\n".encode("cp1252"), "windows-1252", "Windows-1252"),
    ],
    ids=["utf-8", "utf-8-bom", "utf-16", "windows-1252"],
)
def test_encodings_and_delimiters_are_read(client, login_as, db, content, encoding, label):
    login_as("staff")
    imp = uploaded(client, db, content)
    assert imp.encoding == encoding
    assert imp.headers == ["name", "phone"]
    assert imp.mapping == {"0": "name", "1": "phone"}
    body = client.get(f"/contacts/import/{imp.id}").get_data(as_text=True)
    assert f"read as {label}" in body
    assert "José Müller" in body
    assert ('id="import-encoding-warning"' in body) is (encoding == "windows-1252")
    imp = run(client, db, imp)
    assert imp.status == "done"
    assert contact_named(db, "José Müller").phone == "+14155552671"


@pytest.mark.parametrize("htmx", [False, True])
def test_missing_name_mapping_is_shown_in_place_and_keeps_the_choices(client, login_as, db, htmx):
    login_as("staff")
    imp = uploaded(client, db, b"Nombre,Telefono\nAna,4155552671\n")
    assert imp.mapping == {}
    page = client.get(f"/contacts/import/{imp.id}").get_data(as_text=True)
    assert "Choose the column that holds the name" in page  # said before anything is tried
    response = preview(client, imp, htmx=htmx, mapping={1: "phone"}, region="GB")
    assert response.status_code == 422
    body = response.get_data(as_text=True)
    assert ("<html" in body) is not htmx
    assert "Choose the column that holds the name" in body
    assert re.search(r'name="column-1".*?<option value="phone" selected>', body, re.S)
    assert "<option selected>GB</option>" in body
    assert 'id="import-preview"' not in body
    response = client.form(f"/contacts/import/{imp.id}/run")
    assert response.status_code == 422  # refused to run without a name
    db.session.expire_all()
    assert db.session.get(ContactImport, imp.id).status == "mapping"


def test_conflicting_mapping_is_refused(client, login_as, db):
    login_as("staff")
    imp = uploaded(client, db, b"a,b,c\nAna,Lima,x\n")
    response = preview(client, imp, mapping={0: "name", 1: "last_name", 2: "name"})
    body = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "not both" in body
    assert "Name is chosen for more than one column" in body


# Dry run and real run.

MIXED = (
    b"Name,Phone,Email,Status,Tags\n"
    b"New Person,4155550101,new@example.org,,vip\n"  # 2 create
    b"Phone Match,(415) 555-2671,,inactive,\n"  # 3 update the existing contact by phone
    b"Email Match,,OLD@example.org,,\n"  # 4 update the existing contact by email
    b"New Person Again,+1 415 555 0101,,,\n"  # 5 same phone as row 2 of the file
    b"Bad Phone,12,,,\n"  # 6 error
    b"Bad Email,,nope@,,\n"  # 7 error
    b"Bad Status,,,sleeping,\n"  # 8 error
    b'"=HYPERLINK(""http://evil.example"",""x"")",,,,\n'  # 9 error: formula
    b",4155550199,,,\n"  # 10 error: no name
    b"\n"  # 11 blank: not a row
    b"Unchanged,4155552672,same@example.org,active,\n"  # 12 skip: already up to date
)


@pytest.fixture
def existing(make_contact):
    return {
        "phone": make_contact("Phone Owner", phone="+14155552671", email="p@example.org"),
        "email": make_contact("Email Owner", email="old@example.org"),
        "same": make_contact("Unchanged", phone="+14155552672", email="same@example.org"),
    }


@pytest.mark.parametrize("htmx", [False, True])
def test_import_dry_run_and_real_run_agree(client, login_as, db, existing, htmx):
    staff = login_as("staff")
    imp = uploaded(client, db, MIXED)
    response = preview(client, imp, htmx=htmx)
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert ("<html" in body) is not htmx
    planned = plan_outcomes(body)
    assert planned == {
        2: "create",
        3: "update",
        4: "update",
        5: "update",
        6: "error",
        7: "error",
        8: "error",
        9: "error",
        10: "error",
        12: "skip",
    }
    assert "Same phone as row 2 of this file" in body
    assert "not a valid phone number for US" in body
    assert "is not a valid email address" in body
    assert "Unknown status" in body
    assert "holds a spreadsheet formula" in body
    assert "The name is missing." in body
    assert count(db, Contact) == 3  # a dry run writes nothing
    assert count(db, Tag) == 0

    imp = run(client, db, imp)
    assert imp.status == "done"
    assert imp.finished_at is not None
    assert imp.processed_rows == imp.total_rows == 10
    done = {
        r.row_number: r.outcome
        for r in db.session.execute(
            db.select(ContactImportRow).filter_by(import_id=imp.id)
        ).scalars()
    }
    assert done == planned
    assert (imp.created_count, imp.updated_count, imp.skipped_count, imp.error_count) == (
        1,
        3,
        1,
        5,
    )
    new = contact_named(db, "New Person Again")  # row 5 renamed what row 2 created
    assert new.phone == "+14155550101" and new.email == "new@example.org"
    assert [t.name for t in new.tags] == ["vip"]
    phone_owner = db.session.get(Contact, existing["phone"].id)
    assert (phone_owner.name, phone_owner.status) == ("Phone Match", "inactive")
    assert phone_owner.email == "p@example.org"  # an empty cell never blanks a field
    created = db.session.execute(
        db.select(AuditEntry).filter_by(action="contact.created", object_id=new.id)
    ).scalar_one()
    assert created.actor_id == staff.id
    assert created.changes["phone"] == [None, "+14155550101"]
    updated = db.session.execute(
        db.select(AuditEntry).filter_by(action="contact.updated", object_id=phone_owner.id)
    ).scalar_one()
    assert updated.changes == {
        "name": ["Phone Owner", "Phone Match"],
        "status": ["active", "inactive"],
    }


def test_trashed_contacts_are_not_matched(client, login_as, db, make_contact):
    login_as("staff")
    from crm.database import utcnow

    make_contact("In Trash", phone="+14155552671", deleted_at=utcnow())
    imp = uploaded(client, db, b"name,phone\nFresh,4155552671\n")
    body = preview(client, imp).get_data(as_text=True)
    assert plan_outcomes(body) == {2: "create"}


@pytest.mark.parametrize("on_match", ["update", "skip"])
def test_on_match_update_or_skip(client, login_as, db, make_contact, on_match):
    login_as("staff")
    contact = make_contact("Ana Lima", phone="+14155552671", email="ana@old.org")
    imp = uploaded(
        client, db, b"name,phone,email,tags\nAna Lima,415-555-2671,ANA@new.org,coaching\n"
    )
    body = preview(client, imp, on_match=on_match).get_data(as_text=True)
    assert plan_outcomes(body) == {2: on_match}
    assert f"Same phone as Ana Lima (#{contact.id})" in body
    imp = run(client, db, imp)
    contact = db.session.get(Contact, contact.id)
    if on_match == "update":
        assert contact.email == "ana@new.org"
        assert [t.name for t in contact.tags] == ["coaching"]
        assert imp.updated_count == 1
    else:
        assert contact.email == "ana@old.org"
        assert contact.tags == []
        assert imp.skipped_count == 1
    assert count(db, Contact) == 1


def test_tags_column_reuses_tags_ignoring_case_and_creates_new_ones(
    client, login_as, db, make_contact
):
    login_as("staff")
    vip = Tag(name="VIP")
    db.session.add(vip)
    db.session.commit()
    imp = uploaded(client, db, b'name,labels\nAna,vip; New Tag\nBen,"new tag, vip,Other"\nCy,\n')
    imp = run(client, db, imp)
    assert imp.created_count == 3
    assert [t.name for t in contact_named(db, "Ana").tags] == ["New Tag", "VIP"]
    assert [t.name for t in contact_named(db, "Ben").tags] == ["New Tag", "Other", "VIP"]
    assert contact_named(db, "Cy").tags == []
    names = sorted(t.name for t in db.session.execute(db.select(Tag)).scalars())
    assert names == ["New Tag", "Other", "VIP"]


def test_default_region_reads_national_numbers(client, login_as, db):
    login_as("staff")
    imp = uploaded(client, db, b"name,phone\nAlf,020 7946 0018\nBea,+1 415 555 2671\n")
    body = preview(client, imp, region="GB").get_data(as_text=True)
    assert plan_outcomes(body) == {2: "create", 3: "create"}
    run(client, db, imp)
    assert contact_named(db, "Alf").phone == "+442079460018"
    assert contact_named(db, "Bea").phone == "+14155552671"


def test_many_rows_run_in_chunks(client, login_as, db):
    login_as("staff")
    lines = ["name,phone,email"]
    for i in range(1200):
        lines.append(f"Person {i},+1415555{i:04d},p{i}@example.org")
    lines.append("Person 0 again,,p0@example.org")  # matches a row of the first chunk
    imp = uploaded(client, db, "\n".join(lines).encode())
    body = preview(client, imp).get_data(as_text=True)
    assert "the counts above cover all 1201" in body
    assert len(plan_outcomes(body)) == 500
    imp = run(client, db, imp)
    assert (imp.processed_rows, imp.created_count, imp.updated_count) == (1201, 1200, 1)
    assert contact_named(db, "Person 0 again").phone == "+14155550000"


def test_escaped_in_preview_and_result(client, login_as, db):
    login_as("staff")
    imp = uploaded(
        client,
        db,
        b"<b>name</b>,tags\n<script>alert(1)</script>,<img src=x onerror=alert(1)>\n",
        filename="<i>list</i>.csv",
    )
    page = client.get(f"/contacts/import/{imp.id}").get_data(as_text=True)
    assert "<b>name</b>" not in page and "&lt;b&gt;name&lt;/b&gt;" in page
    body = preview(client, imp, mapping={0: "name", 1: "tags"}).get_data(as_text=True)
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "<img src=x" not in body
    run(client, db, imp)
    listing = client.get("/contacts/import").get_data(as_text=True)
    assert "<i>list</i>" not in listing and "&lt;i&gt;list&lt;/i&gt;.csv" in listing
    result = client.get(f"/contacts/import/{imp.id}").get_data(as_text=True)
    assert "<i>list</i>" not in result and "<b>name</b>" not in result


def test_a_started_import_cannot_be_remapped_or_run_twice(client, login_as, db, redis):
    login_as("staff")
    imp = uploaded(client, db, b"name\nAna\n")
    assert client.form(f"/contacts/import/{imp.id}/run").status_code == 303
    assert get_queue("default").count == 1
    again = client.form(f"/contacts/import/{imp.id}/run", follow_redirects=True)
    assert "already been started" in again.get_data(as_text=True)
    assert get_queue("default").count == 1
    remap = client.form(f"/contacts/import/{imp.id}/preview", mapping_form(imp))
    assert remap.status_code == 303
    run_worker()
    from jobs.imports import run_import

    run_import(imp.id)  # a second delivery of the job does nothing
    db.session.expire_all()
    assert count(db, Contact) == 1


# Progress and result.


def test_progress_fragment_polls_until_done(client, login_as, db):
    login_as("staff")
    imp = uploaded(client, db, b"name\nAna\nBen\n")
    waiting = client.htmx_get(f"/contacts/import/{imp.id}/progress").get_data(as_text=True)
    assert "has not started yet" in waiting and "hx-trigger" not in waiting
    client.form(f"/contacts/import/{imp.id}/preview", mapping_form(imp))
    client.form(f"/contacts/import/{imp.id}/run")
    url = f"/contacts/import/{imp.id}/progress"

    fragment = client.htmx_get(url)
    body = fragment.get_data(as_text=True)
    assert fragment.status_code == 200
    assert "<html" not in body
    assert body.lstrip().startswith('<section id="import-progress"')
    assert 'hx-trigger="every 1s"' in body
    assert "0 of 2 rows done" in body
    assert "HX-Request" in fragment.headers["Vary"]
    page = client.get(url).get_data(as_text=True)
    assert "<html" in page and 'hx-trigger="every 1s"' in page
    assert f'href="/contacts/import/{imp.id}">Refresh' in page  # works without JavaScript

    run_worker()
    body = client.htmx_get(url).get_data(as_text=True)
    assert "hx-trigger" not in body
    assert "Import finished" in body
    assert '<strong data-count="create">2</strong>' in body
    page = client.get(f"/contacts/import/{imp.id}").get_data(as_text=True)
    assert "hx-trigger" not in page and "Revert this import" in page


def test_rejected_rows_download_with_error_column_and_neutralized_formulas(client, login_as, db):
    login_as("staff")
    content = (
        b"Name,Phone,Note\n"
        b'"=HYPERLINK(""http://evil.example"",""click"")",+14155552671,@SUM(A1)\n'
        b"Ana,12,-2+3\n"
        b"Good,+14155552672,fine\n"
    )
    imp = uploaded(client, db, content)
    imp = run(client, db, imp)
    assert imp.error_count == 2
    page = client.get(f"/contacts/import/{imp.id}").get_data(as_text=True)
    assert f'href="/contacts/import/{imp.id}/rejected.csv"' in page
    response = client.get(f"/contacts/import/{imp.id}/rejected.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert "attachment" in response.headers["Content-Disposition"]
    text = response.get_data().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["Name", "Phone", "Note", "error"]
    assert rows[1][:3] == [
        '\'=HYPERLINK("http://evil.example","click")',
        "+14155552671",
        "'@SUM(A1)",
    ]
    assert "spreadsheet formula" in rows[1][3]
    assert rows[2][:3] == ["Ana", "12", "'-2+3"]
    assert "not a valid phone number" in rows[2][3]
    assert len(rows) == 3


# Revert.


def test_import_revert(client, login_as, db, make_contact):
    staff = login_as("staff")
    kept = make_contact("Kept Name", phone="+14155552671", email="kept@old.org", status="active")
    conflicted = make_contact("Conflicted", phone="+14155552672", email="c@old.org")
    vip = Tag(name="vip")
    db.session.add(vip)
    db.session.commit()
    content = (
        b"name,phone,email,status,tags\n"
        b"Kept Name,4155552671,kept@new.org,inactive,vip\n"
        b"Conflicted,4155552672,c@new.org,,\n"
        b"Brand New,4155550123,,,vip\n"
    )
    imp = run(client, db, uploaded(client, db, content))
    assert (imp.created_count, imp.updated_count) == (1, 2)
    created = contact_named(db, "Brand New")
    # Someone edits a field after the import: the revert must not overwrite it.
    conflicted = db.session.get(Contact, conflicted.id)
    conflicted.email = "c@edited.org"
    db.session.commit()

    response = client.form(f"/contacts/import/{imp.id}/revert")
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "The import was reverted" in page
    assert f"Conflicted (#{conflicted.id}): email was changed after the import" in page
    assert "Import reverted" in page and "Revert this import" not in page

    db.session.expire_all()
    assert db.session.get(ContactImport, imp.id).status == "reverted"
    kept = db.session.get(Contact, kept.id)
    assert (kept.email, kept.status, kept.tags) == ("kept@old.org", "active", [])
    conflicted = db.session.get(Contact, conflicted.id)
    assert conflicted.email == "c@edited.org"
    created = db.session.get(Contact, created.id)
    assert created.deleted_at is not None  # in the trash, restorable
    listing = client.get("/contacts/").get_data(as_text=True)
    assert "Brand New" not in listing and "Kept Name" in listing
    actions = {
        (e.action, e.object_id)
        for e in db.session.execute(db.select(AuditEntry).filter_by(actor_id=staff.id)).scalars()
    }
    assert ("contact.deleted", created.id) in actions
    assert ("contact_import.reverted", imp.id) in actions
    restored = (
        db.session.execute(
            db.select(AuditEntry)
            .filter_by(action="contact.updated", object_id=kept.id)
            .order_by(AuditEntry.id.desc())
        )
        .scalars()
        .first()
    )
    assert restored.changes["email"] == ["kept@new.org", "kept@old.org"]
    assert restored.changes["tags"] == [["vip"], []]

    again = client.form(f"/contacts/import/{imp.id}/revert", follow_redirects=True)
    assert "Only a finished import can be reverted" in again.get_data(as_text=True)


def test_only_a_finished_import_can_be_reverted(client, login_as, db):
    login_as("staff")
    imp = uploaded(client, db, b"name\nAna\n")
    response = client.form(f"/contacts/import/{imp.id}/revert", follow_redirects=True)
    assert "Only a finished import can be reverted" in response.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(ContactImport, imp.id).status == "mapping"


# Access.


def test_coach_gets_403_everywhere(client, login_as, make_user, db):
    staff = make_user("staff")
    imp = ContactImport(
        actor_id=staff.id, filename="x.csv", content=b"name\nAna\n", headers=["name"], region="US"
    )
    db.session.add(imp)
    db.session.commit()
    login_as("coach")
    base = f"/contacts/import/{imp.id}"
    for url in ("/contacts/import", base, f"{base}/progress", f"{base}/rejected.csv"):
        assert client.get(url).status_code == 403, url
    for url in ("/contacts/import", f"{base}/preview", f"{base}/run", f"{base}/revert"):
        assert client.form(url, {}).status_code == 403, url


def test_admin_sees_staff_imports_and_unknown_import_is_404(client, login_as, db, make_user):
    staff = make_user("staff", name="Sam Staff")
    imp = ContactImport(
        actor_id=staff.id,
        filename="sams.csv",
        content=b"name\nAna\n",
        headers=["name"],
        region="US",
    )
    db.session.add(imp)
    db.session.commit()
    login_as("admin")
    listing = client.get("/contacts/import").get_data(as_text=True)
    assert "sams.csv" in listing and "Sam Staff" in listing
    assert client.get(f"/contacts/import/{imp.id}").status_code == 200
    assert client.get(f"/contacts/import/{imp.id + 1000}").status_code == 404
