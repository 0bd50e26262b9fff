"""CSV import: upload, column mapping, dry run, run, result and revert."""

from __future__ import annotations

from flask import Response, abort, current_app, flash, request, url_for
from flask_login import current_user

from crm.auth.access import STAFF_ROLES, roles_required
from crm.contacts import imports
from crm.contacts.models import ContactImport
from crm.contacts.views import bp
from crm.extensions import db
from crm.htmx import redirect_303, render
from jobs import enqueue_after_commit
from jobs.imports import IMPORT_JOB_TIMEOUT, run_import

RECENT_IMPORTS = 20


def _get_import_or_404(import_id: int) -> ContactImport:
    # Only staff reach these views, and staff may see every import.
    contact_import = db.session.get(ContactImport, import_id)
    if contact_import is None:
        abort(404)
    return contact_import


def _upload_page(error: str | None = None, status: int = 200):
    recent = db.session.execute(
        db.select(ContactImport)
        .order_by(ContactImport.created_at.desc(), ContactImport.id.desc())
        .limit(RECENT_IMPORTS)
    ).scalars()
    return render(
        "contacts/import.html",
        "upload_form",
        status=status,
        error=error,
        recent=list(recent),
        max_mb=imports.IMPORT_MAX_BYTES // 1024 // 1024,
    )


def _show_page(contact_import: ContactImport, block: str | None, status: int = 200, **context):
    context.setdefault("errors", [])
    context.setdefault("preview", None)
    return render(
        "contacts/import_show.html",
        block,
        status=status,
        imp=contact_import,
        fields=imports.FIELDS,
        samples=imports.sample_rows(contact_import) if contact_import.status == "mapping" else [],
        regions=imports.regions(),
        encoding_label=imports.ENCODING_LABELS.get(
            contact_import.encoding, contact_import.encoding
        ),
        **context,
    )


@bp.get("/import")
@roles_required(*STAFF_ROLES)
def import_new():
    """Show the upload form and the recent imports."""
    return _upload_page()


@bp.post("/import")
@roles_required(*STAFF_ROLES)
def import_create():
    """Store an uploaded CSV and go on to its column mapping; explain any bad file in place."""
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _upload_page("Choose a CSV file to upload.", 422)
    # Read one byte past the limit: enough to know it is too big without reading it all.
    try:
        content = upload.stream.read(imports.IMPORT_MAX_BYTES + 1)
    finally:
        upload.close()  # a large upload is spooled to a temporary file
    try:
        contact_import = imports.create_import(
            upload.filename,
            content,
            region=current_app.config["DEFAULT_PHONE_REGION"],
            actor=current_user,
        )
    except imports.ImportFileError as exc:
        return _upload_page(exc.message, 422)
    db.session.commit()
    return redirect_303(url_for("contacts.import_show", import_id=contact_import.id))


@bp.get("/import/<int:import_id>")
@roles_required(*STAFF_ROLES)
def import_show(import_id: int):
    """Show one import: its mapping form before it runs, its progress and result after."""
    contact_import = _get_import_or_404(import_id)
    errors = []
    if contact_import.status == "mapping":
        errors = imports.mapping_errors(contact_import.mapping)
    return _show_page(contact_import, None, errors=errors)


@bp.post("/import/<int:import_id>/preview")
@roles_required(*STAFF_ROLES)
def import_preview(import_id: int):
    """Save the mapping, default region and match rule, and show the dry run."""
    contact_import = _get_import_or_404(import_id)
    if contact_import.status != "mapping":
        flash("This import has already been started; its mapping cannot change.", "error")
        return redirect_303(url_for("contacts.import_show", import_id=import_id))
    mapping = imports.read_mapping(request.form, contact_import.headers)
    errors = imports.mapping_errors(mapping)
    on_match = request.form.get("on_match", "")
    if on_match not in ("update", "skip"):
        errors.append("Choose what to do with rows that match an existing contact.")
    region = (request.form.get("region") or "").strip().upper()
    if not imports.valid_region(region):
        errors.append("Choose the country for phone numbers written without a country code.")
    if errors:
        # What was chosen stays on the form even when it is refused.
        return _show_page(
            contact_import,
            "workspace",
            status=422,
            errors=errors,
            chosen={"mapping": mapping, "on_match": on_match, "region": region},
        )
    contact_import.mapping = mapping
    contact_import.on_match = on_match
    contact_import.region = region
    db.session.commit()
    preview = imports.dry_run(contact_import, actor=current_user)
    return _show_page(contact_import, "workspace", preview=preview)


@bp.post("/import/<int:import_id>/run")
@roles_required(*STAFF_ROLES)
def import_run(import_id: int):
    """Queue the import as a background job and show its progress."""
    contact_import = _get_import_or_404(import_id)
    if contact_import.status != "mapping":
        flash("This import has already been started.", "error")
        return redirect_303(url_for("contacts.import_show", import_id=import_id))
    if imports.mapping_errors(contact_import.mapping):
        return _show_page(
            contact_import,
            None,
            status=422,
            errors=imports.mapping_errors(contact_import.mapping),
        )
    imports.start_import(contact_import, actor=current_user)
    enqueue_after_commit(
        "default",
        run_import,
        contact_import.id,
        job_id=f"import-{contact_import.id}",
        job_timeout=IMPORT_JOB_TIMEOUT,
    )
    db.session.commit()
    return redirect_303(url_for("contacts.import_show", import_id=import_id))


@bp.get("/import/<int:import_id>/progress")
@roles_required(*STAFF_ROLES)
def import_progress(import_id: int):
    """The progress fragment; it polls itself while the job is queued or running."""
    return _show_page(_get_import_or_404(import_id), "progress")


@bp.get("/import/<int:import_id>/rejected.csv")
@roles_required(*STAFF_ROLES)
def import_rejected(import_id: int):
    """Download the rejected rows with an error column, safe to open in a spreadsheet."""
    contact_import = _get_import_or_404(import_id)
    if contact_import.status == "mapping":
        abort(404)
    # A BOM so that spreadsheets read accented names as UTF-8.
    body = "\ufeff" + imports.rejected_csv(contact_import)
    stem = contact_import.filename.rsplit(".", 1)[0] or "import"
    safe_stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:80]
    return Response(
        body.encode("utf-8"),
        mimetype="text/csv",
        headers={
            "Content-Disposition": (
                f'attachment; filename="{safe_stem}-rejected-{contact_import.id}.csv"'
            )
        },
    )


@bp.post("/import/<int:import_id>/revert")
@roles_required(*STAFF_ROLES)
def import_revert(import_id: int):
    """Undo a finished import: created contacts to the trash, updated ones restored."""
    contact_import = _get_import_or_404(import_id)
    if contact_import.status != "done":
        flash("Only a finished import can be reverted.", "error")
        return redirect_303(url_for("contacts.import_show", import_id=import_id))
    conflicts = imports.revert_import(contact_import, actor=current_user)
    db.session.commit()
    flash(
        f"The import was reverted: {contact_import.created_count} created contact(s) moved "
        f"to the trash, updated contacts restored.",
        "success",
    )
    if conflicts:
        more = f" …and {len(conflicts) - 5} more." if len(conflicts) > 5 else ""
        flash("Kept because they changed after the import: " + " ".join(conflicts[:5]) + more)
    return redirect_303(url_for("contacts.import_show", import_id=import_id))
