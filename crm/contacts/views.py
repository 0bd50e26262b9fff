from __future__ import annotations

import json
from functools import lru_cache
from urllib.parse import parse_qsl, urlencode

import phonenumbers
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask_login import current_user, login_required
from jinja2 import pass_environment
from jinja2_fragments.flask import render_block
from markupsafe import Markup
from werkzeug.datastructures import MultiDict

from crm.contacts import cache, listing
from crm.contacts.exports import export_rows
from crm.contacts.listing import ListQuery, get_visible_or_404, visible_contacts
from crm.contacts.models import STATUSES, Contact, SavedView
from crm.contacts.services import (
    create_contact,
    find_duplicates,
    read_contact_form,
    update_contact,
)
from crm.database import utcnow
from crm.extensions import db
from crm.htmx import redirect_303, render
from crm.redis_client import read_along
from crm.users.models import User

bp = Blueprint("contacts", __name__, url_prefix="/contacts")

PAGE_SIZE = 50
# Links above the list: (label, endpoint, staff only).
TOOLS = (
    ("Import", "contacts.import_new", True),
    ("Tags", "contacts.tags_index", True),
    ("Duplicates", "contacts.duplicates", False),
    ("Trash", "contacts.trash", False),
)


@bp.app_template_filter("phone")
@pass_environment
def format_phone(environment, e164: str | None) -> str:
    """Show a stored E.164 number nationally when it is local, internationally otherwise."""
    if not e164:
        return ""
    # The template's app, not `current_app`: a list writes fifty numbers, and looking
    # through the context-local proxy cost more than the cached formatting.
    return _formatted(e164, environment.app.config["DEFAULT_PHONE_REGION"])


@lru_cache(maxsize=65536)
def _formatted(e164: str, region: str) -> str:
    # Parsing costs more than the rest of a list row; the same numbers come back page after page.
    try:
        number = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return e164
    local = phonenumbers.region_code_for_number(number) == region
    style = (
        phonenumbers.PhoneNumberFormat.NATIONAL
        if local
        else phonenumbers.PhoneNumberFormat.INTERNATIONAL
    )
    return phonenumbers.format_number(number, style)


class IdUrls:
    """The URLs of one endpoint for many ids: `show_url[contact.id]` in a template.

    A list page links each of its rows several times. Routing each link costs more than
    the rest of the row, and so does a call from a template (Jinja wraps every call); an
    item lookup does not. The endpoint is routed once, with a marker where the id goes.
    """

    __slots__ = ("_head", "_tail")

    def __init__(self, endpoint: str, key: str, **values):
        marker = "918273645"
        head, found, tail = url_for(endpoint, **{key: marker}, **values).partition(marker)
        if not found:
            raise ValueError(f"{endpoint} does not put {key} in its URL")
        self._head, self._tail = head, tail

    def __getitem__(self, value: int) -> str:
        # A plain string, escaped where the template writes it: the quickest path there.
        return f"{self._head}{int(value)}{self._tail}"


bp.add_app_template_global(IdUrls, "id_url")


@bp.app_template_filter("day")
def format_day(moment) -> str:
    """A date as the lists show it (2026-11-21), or a dash when there is none."""
    return moment.date().isoformat() if moment else "—"


def _coaches() -> list[User]:
    query = db.select(User).filter_by(role="coach", active=True).order_by(User.name)
    return list(db.session.execute(query).scalars())


def _duplicates(values: dict, exclude_id: int | None) -> list[Contact]:
    # Only duplicates this user may open are named; a coach never learns of others' clients.
    return find_duplicates(
        values.get("phone"),
        values.get("email"),
        within=visible_contacts(current_user),
        exclude_id=exclude_id,
    )


def _form_page(form, contact: Contact | None, status: int = 200, duplicates=()):
    return render(
        "contacts/form.html",
        "contact_form",
        status=status,
        form=form,
        contact=contact,
        coaches=_coaches(),
        statuses=STATUSES,
        duplicates=duplicates,
    )


@bp.before_request
def _read_search_options_along() -> None:
    # A search is never kept, so all the list cache gives it is the filter options (the
    # bulk bar's coaches), and those can come with the signed-in user's version check: a
    # search then costs one Redis round trip. Before the user is loaded, so by the id the
    # session holds; `index` checks what it was given against the user it loads.
    user_id = session.get("_user_id")
    if request.endpoint == "contacts.index" and request.args.get("q") and user_id:
        read_along(cache.VERSION_KEY, cache.OPTIONS_KEY.format(user_id=user_id))


@bp.get("/")
@login_required
def index():
    """List the contacts this user may see: search, filters and sort from the URL.

    htmx asks for the results (after a filter change) or for more rows (load more).
    """
    state = ListQuery.from_args(request.args)
    after = request.args.get("after", "")
    # Browsing pages (not searches) come from the cache while nothing has changed.
    page_key = None
    if not state.q:
        page_key = cache.page_key(_scope(current_user), f"{state.query_string()}|{after}")
    options_key = cache.OPTIONS_KEY.format(user_id=current_user.id)
    full_page = not request.htmx or request.htmx.boosted
    # The filter bar needs every option; the results' bulk bar, the coaches to assign.
    need_options = full_page or (not after and not current_user.is_coach)
    keys = [k for k in (page_key, options_key if need_options else None) if k]
    version, found = cache.lookup(*keys) if keys else (None, [])
    rows = found[0] if page_key else None
    row_context = {}
    if rows is None:
        contacts, next_after = listing.page(state, current_user, after=after, size=PAGE_SIZE)
        row_context = {
            "contacts": contacts,
            "next_url": _list_url(state, after=next_after) if next_after else None,
        }
        if page_key:
            rows = render_block("contacts/index.html", "rows", state=state, **row_context)
            cache.store(page_key, version, rows)
            row_context = {}
    context = {
        # Kept rows go in as they are; a search's rows render with the rest of the page.
        "rendered_rows": Markup(rows) if rows is not None else None,
        **row_context,
        "statuses": STATUSES,
        "state": state,
        "sorts": listing.SORTS,
        "list_url": _list_url(state),
        "contact_tools": [t for t in TOOLS if t[1] in current_app.view_functions],
    }
    if request.args.get("count"):  # the count, without JavaScript to load it lazily
        context["total"] = listing.count(state, current_user)
    options = None
    if need_options:
        options = found[-1]
        if options is None:
            options = json.dumps(listing.filter_options(current_user))
            cache.store(options_key, version, options)
        options = json.loads(options)
    if not full_page:
        if options:
            context["coaches"] = options["coaches"]
        response = render("contacts/index.html", "rows" if after else "results", **context)
        if not after:
            # The filter form sends its empty fields too; the address bar gets the clean URL.
            response.headers["HX-Push-Url"] = context["list_url"]
        return response
    return render("contacts/index.html", **context, **options)


def _scope(user: User) -> str:
    """Who sees the same list: all staff alike, each coach their own clients."""
    return f"coach-{user.id}" if user.is_coach else "staff"


def _list_url(state: ListQuery, **extra) -> str:
    query = state.query_string()
    if extra:
        query = "&".join(filter(None, [query, urlencode(extra)]))
    return url_for("contacts.index") + ("?" + query if query else "")


@bp.get("/count")
@login_required
def count():
    """Count the contacts matching the list's filters; loaded after the page itself."""
    state = ListQuery.from_args(request.args)
    key = None if state.q else cache.page_key(_scope(current_user), f"count|{state.query_string()}")
    version, (total,) = cache.lookup(key) if key else (None, [None])
    if total is None:
        total = str(listing.count(state, current_user))
        if key:
            cache.store(key, version, total)
    return render(
        "contacts/index.html", "count", total=int(total), state=state, list_url=_list_url(state)
    )


@bp.get("/export.csv")
@login_required
def export():
    """Download the contacts matching the list's filters as CSV, streamed row by row."""
    state = ListQuery.from_args(request.args)
    filename = f"contacts-{utcnow():%Y%m%d-%H%M}.csv"
    response = Response(stream_with_context(export_rows(state, current_user)), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@bp.post("/views")
@login_required
def view_create():
    """Save the list's current query under a name, for this user."""
    state = ListQuery.from_args(MultiDict(parse_qsl(request.form.get("query", ""))))
    name = (request.form.get("name") or "").strip()
    error = None
    if not name:
        error = "Give the view a name."
    elif len(name) > 100:
        error = "Keep the name under 100 characters."
    else:
        existing = db.session.execute(
            db.select(SavedView).filter_by(user_id=current_user.id, name=name)
        ).scalar_one_or_none()
        if existing is not None:
            existing.query = state.query_string()
        else:
            db.session.add(
                SavedView(user_id=current_user.id, name=name, query=state.query_string())
            )
        db.session.commit()
    if not request.htmx:
        if error:
            flash(error, "error")
        else:
            flash(f"Saved the view {name}.", "success")
        return redirect_303(_list_url(state))
    options = listing.filter_options(current_user)
    return render(
        "contacts/index.html",
        "saved_views",
        status=422 if error else 200,
        view_error=error,
        **options,
    )


@bp.post("/views/<int:view_id>/delete")
@login_required
def view_delete(view_id: int):
    """Forget one of this user's saved views."""
    view = db.session.get(SavedView, view_id)
    if view is None or view.user_id != current_user.id:
        abort(404)
    db.session.delete(view)
    db.session.commit()
    if not request.htmx:
        flash(f"Removed the view {view.name}.", "success")
        return redirect_303(url_for("contacts.index"))
    return render("contacts/index.html", "saved_views", **listing.filter_options(current_user))


@bp.get("/new")
@login_required
def new():
    """Show the form for a new contact."""
    return _form_page(None, None)


@bp.post("/")
@login_required
def create():
    """Create a contact; warn, without blocking, when its phone or email already exists."""
    form = read_contact_form(
        request.form, region=current_app.config["DEFAULT_PHONE_REGION"], actor=current_user
    )
    if not form.valid:
        return _form_page(form, None, 422)
    duplicates = _duplicates(form.clean, None)
    if duplicates and not request.form.get("confirm_duplicate"):
        return _form_page(form, None, 200, duplicates)
    contact = create_contact(form.clean, actor=current_user)
    db.session.commit()
    flash(f"{contact.name} was added.", "success")
    return redirect_303(url_for("contacts.show", contact_id=contact.id))


@bp.get("/<int:contact_id>/edit")
@login_required
def edit(contact_id: int):
    """Edit a contact: inline in its list row with htmx, or as a form page."""
    contact = get_visible_or_404(contact_id, current_user)
    if request.htmx and request.args.get("inline"):
        return _row(contact, editing={contact.id: None})
    return _form_page(None, contact)


@bp.get("/<int:contact_id>/row")
@login_required
def row(contact_id: int):
    """One list row, read-only (cancelling an inline edit)."""
    contact = get_visible_or_404(contact_id, current_user)
    return _row(contact)


def _row(contact: Contact, status: int = 200, **context):
    return render(
        "contacts/index.html",
        "rows",
        status=status,
        contacts=[listing.row_of(contact)],
        statuses=STATUSES,
        **context,
    )


@bp.post("/<int:contact_id>")
@login_required
def update(contact_id: int):
    """Save a contact from the form page or from its inline row."""
    contact = get_visible_or_404(contact_id, current_user)
    inline = bool(request.htmx and request.form.get("inline"))
    form = read_contact_form(
        request.form,
        region=current_app.config["DEFAULT_PHONE_REGION"],
        actor=current_user,
        current=contact,
    )
    if not form.valid:
        if inline:
            return _row(contact, 422, editing={contact.id: form})
        return _form_page(form, contact, 422)
    update_contact(contact, form.clean, actor=current_user)
    db.session.commit()
    if inline:
        duplicates = _duplicates(form.clean, contact.id)
        return _row(contact, row_duplicates={contact.id: duplicates})
    flash(f"{contact.name} was saved.", "success")
    return redirect_303(url_for("contacts.show", contact_id=contact.id))


# The rest of the contacts pages live beside this module, on the same blueprint.
from crm.contacts import (  # noqa: E402, F401
    views_bulk,
    views_detail,
    views_import,
    views_merge,
    views_tags,
)
