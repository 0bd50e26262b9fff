"""The Flask CLI: users create, seed demo."""

from __future__ import annotations

from crm.auth.services import authenticate_password
from crm.users.models import User


def user(db, email):
    return db.session.execute(db.select(User).filter_by(email=email)).scalar_one_or_none()


def test_users_create_with_password(app, db):
    args = ["users", "create", "Root@Example.com", "--role", "admin"]
    result = app.test_cli_runner().invoke(args=[*args, "--password", "a long password"])
    assert result.exit_code == 0, result.output
    assert "Created root@example.com (admin)." in result.output
    created = user(db, "root@example.com")
    assert created.role == "admin" and created.active
    assert authenticate_password("root@example.com", "a long password", ip="127.0.0.9") == created


def test_users_create_prompts_for_the_password(app, db):
    result = app.test_cli_runner().invoke(
        args=["users", "create", "coach@example.com", "--role", "coach"],
        input="typed password 1\ntyped password 1\n",
    )
    assert result.exit_code == 0, result.output
    assert user(db, "coach@example.com").check_password("typed password 1")


def test_users_create_refuses_bad_input(app, db):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "create", "x@example.com", "--role", "owner"])
    assert result.exit_code == 2 and "owner" in result.output
    result = runner.invoke(
        args=["users", "create", "x@example.com", "--role", "staff", "--password", "short"]
    )
    assert result.exit_code == 1 and "at least 10 characters" in result.output
    assert user(db, "x@example.com") is None


def test_seed_demo_only_on_an_empty_database(app, db):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["seed", "demo"])
    assert result.exit_code == 0, result.output
    assert "admin@example.com" in result.output
    password = [line for line in result.output.splitlines() if "admin@example.com" in line]
    password = password[0].split()[-1]
    assert authenticate_password("admin@example.com", password, ip="127.0.0.8").role == "admin"
    from crm.contacts.models import Contact

    contacts = db.session.execute(db.select(db.func.count(Contact.id))).scalar_one()
    assert contacts >= 24
    again = runner.invoke(args=["seed", "demo", "--if-empty"])
    assert again.exit_code == 0 and "no demo data added" in again.output
    assert runner.invoke(args=["seed", "demo"]).exit_code == 1
