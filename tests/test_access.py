"""Roles: navigation by role, pages by role, and coach scoping in queries."""

from __future__ import annotations

import pytest


@pytest.fixture
def two_coaches(make_user, make_contact):
    ana = make_user("coach", email="ana@example.com", name="Ana")
    ben = make_user("coach", email="ben@example.com", name="Ben")
    mine = make_contact("Mina Client", owner_id=ana.id)
    theirs = make_contact("Theo Client", owner_id=ben.id)
    nobody = make_contact("Nora Unowned")
    return ana, ben, mine, theirs, nobody


def sign_in(client, user):
    with client.session_transaction() as session:
        session["_user_id"] = str(user.id)


@pytest.mark.parametrize("htmx", [False, True])
def test_coach_sees_only_their_own_clients(client, two_coaches, htmx):
    ana, _, mine, theirs, nobody = two_coaches
    sign_in(client, ana)
    response = client.htmx_get("/contacts/") if htmx else client.get("/contacts/")
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert ("<html" in body) is not htmx
    assert "Mina Client" in body
    assert "Theo Client" not in body and "Nora Unowned" not in body


def test_coach_gets_404_for_another_coachs_client(client, two_coaches):
    ana, _, mine, theirs, nobody = two_coaches
    sign_in(client, ana)
    assert client.get(f"/contacts/{mine.id}").status_code == 200
    assert client.get(f"/contacts/{theirs.id}").status_code == 404
    assert client.get(f"/contacts/{nobody.id}").status_code == 404
    assert "Theo" not in client.get("/").get_data(as_text=True)


def test_staff_see_every_contact(client, login_as, two_coaches):
    _, _, mine, theirs, nobody = two_coaches
    login_as("staff")
    body = client.get("/contacts/").get_data(as_text=True)
    for contact in (mine, theirs, nobody):
        assert contact.name in body
    assert client.get(f"/contacts/{theirs.id}").status_code == 200


def test_contacts_page_loads_more_without_offset(client, login_as, make_contact):
    login_as("staff")
    for n in range(53):
        make_contact(f"Same Name {n // 10}")  # ties on name are ordered by id
    first = client.get("/contacts/").get_data(as_text=True)
    assert first.count('<tr id="contact-') == 50
    load_more = first.split('id="load-more"')[1]
    marker = load_more.split('hx-get="')[1].split('"')[0].replace("&amp;", "&")
    more = client.htmx_get(marker).get_data(as_text=True)
    assert more.count('<tr id="contact-') == 3
    assert "Load more" not in more
    assert client.get("/contacts/?after=garbage").status_code == 400


@pytest.mark.parametrize(
    ("role", "visible", "hidden"),
    [
        ("coach", ["Contacts", "Conversations", "Bookings"], ["Integrations", "Admin"]),
        ("staff", ["Contacts", "Integrations"], ["Admin"]),
        ("admin", ["Contacts", "Integrations", "Admin"], []),
    ],
)
def test_navigation_follows_the_role(client, login_as, role, visible, hidden):
    login_as(role)
    nav = client.get("/").get_data(as_text=True).split('<nav aria-label="Main">')[1]
    nav = nav.split("</nav>")[0]
    for label in visible:
        assert f">{label}<" in nav
    for label in hidden:
        assert f">{label}<" not in nav


@pytest.mark.parametrize(
    ("role", "path", "status"),
    [
        ("coach", "/integrations/", 403),
        ("coach", "/admin/users", 403),
        ("staff", "/admin/users", 403),
        ("staff", "/integrations/", 200),
        ("admin", "/integrations/", 200),
    ],
)
def test_pages_by_role(client, login_as, role, path, status):
    login_as(role)
    assert client.get(path).status_code == status


def test_signed_out_visitors_are_sent_to_sign_in(client):
    for path in ("/", "/contacts/", "/admin/users", "/integrations/", "/contacts/1"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/login?next=")


def test_html_in_data_is_escaped(client, login_as, make_contact):
    login_as("staff")
    contact = make_contact("<script>alert('x')</script>")
    body = client.get(f"/contacts/{contact.id}").get_data(as_text=True)
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert" in body
