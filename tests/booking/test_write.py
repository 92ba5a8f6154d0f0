"""`_write` retries lock and serialization failures only; any other OperationalError (a lost
connection, a schema error) propagates, never hidden as "busy"."""

import sqlite3

import psycopg2
import pytest
from django.db import OperationalError, connection

from portal.booking import services
from portal.errors import Busy, is_lock_failure
from portal.inventory.models import Host
from tests.factories import HostFactory


def wrapped(driver_error: Exception) -> OperationalError:
    """`driver_error` as Django raises it (django.db.utils.DatabaseErrorWrapper): its own
    OperationalError with the same arguments, raised from the driver's."""
    error = OperationalError(*driver_error.args)
    error.__cause__ = driver_error
    return error


def sqlite_error(tmp_path, sql: str) -> sqlite3.OperationalError:
    """A real error of SQLite's, had by running `sql` on a second connection to a database
    whose write lock a first connection holds."""
    path = tmp_path / "locked.sqlite3"
    first = sqlite3.connect(path, timeout=0, isolation_level=None)
    first.execute("CREATE TABLE t (x)")
    first.execute("BEGIN IMMEDIATE")
    second = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        second.execute(sql)
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        first.close()
        second.close()
    raise AssertionError(f"{sql} ran")


class PgError(Exception):
    """Stands for a psycopg2 error, which carries its SQLSTATE as `pgcode`."""

    def __init__(self, pgcode: str, message: str):
        super().__init__(message)
        self.pgcode = pgcode


def test_it_calls_sqlites_lock_failures_lock_failures(tmp_path):
    locked = sqlite_error(tmp_path, "BEGIN IMMEDIATE")
    assert str(locked) == "database is locked"
    assert is_lock_failure(wrapped(locked))
    assert is_lock_failure(wrapped(sqlite3.OperationalError("database table is locked: t")))


def test_it_calls_other_sqlite_errors_no_lock_failure(tmp_path):
    schema = sqlite_error(tmp_path, "SELECT * FROM no_such_table")
    assert "no such table" in str(schema)
    assert not is_lock_failure(wrapped(schema))
    assert not is_lock_failure(wrapped(sqlite3.OperationalError("disk I/O error")))


@pytest.mark.parametrize(
    "pgcode, lock",
    [
        ("40001", True),  # serialization_failure
        ("40P01", True),  # deadlock_detected
        ("55P03", True),  # lock_not_available (lock_timeout, NOWAIT)
        ("57P01", False),  # admin_shutdown: the connection is gone
        ("08006", False),  # connection_failure
        ("42P01", False),  # undefined_table
        ("53100", False),  # disk_full
    ],
)
def test_it_reads_postgresqls_sqlstate(pgcode, lock):
    assert is_lock_failure(wrapped(PgError(pgcode, "could not obtain lock"))) is lock


def test_a_driver_error_without_a_code_is_read_by_its_message():
    assert not is_lock_failure(wrapped(psycopg2.OperationalError("server closed the connection")))


@pytest.mark.django_db(transaction=True)
def test_it_retries_a_lock_failure_then_writes(tmp_path):
    locked = wrapped(sqlite_error(tmp_path, "BEGIN IMMEDIATE"))
    calls = []

    def work():
        calls.append(1)
        if len(calls) < 3:
            raise locked
        return HostFactory(name="written").pk

    pk = services._write(work)
    assert len(calls) == 3
    assert Host.objects.filter(pk=pk, name="written").exists()


@pytest.mark.django_db(transaction=True)
def test_it_answers_busy_once_the_retries_are_spent():
    calls = []

    def work():
        calls.append(1)
        raise wrapped(PgError("40P01", "deadlock detected"))

    with pytest.raises(Busy) as exc:
        services._write(work)
    assert len(calls) == services.RETRIES
    assert exc.value.code == "busy"


@pytest.mark.django_db(transaction=True)
def test_it_lets_any_other_operational_error_through_at_once(tmp_path):
    schema = wrapped(sqlite_error(tmp_path, "SELECT * FROM no_such_table"))
    calls = []

    def work():
        calls.append(1)
        HostFactory(name="rolled-back")
        raise schema

    with pytest.raises(OperationalError) as exc:
        services._write(work)
    assert exc.value is schema and not isinstance(exc.value, Busy)
    assert len(calls) == 1
    assert not Host.objects.filter(name="rolled-back").exists()


# -- On PostgreSQL, with its real errors ---------------------------------------------------------


@pytest.fixture
def other_connection():
    """A second connection to the test database, outside Django's."""
    settings = connection.settings_dict
    other = psycopg2.connect(
        dbname=settings["NAME"], user=settings["USER"], password=settings["PASSWORD"],
        host=settings["HOST"] or None, port=settings["PORT"] or None,
    )  # fmt: skip
    yield other
    other.rollback()
    other.close()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_it_answers_busy_for_a_row_lock_it_cannot_have(other_connection):
    host = HostFactory(name="held")
    with other_connection.cursor() as cursor:  # holds the row until the fixture rolls back
        cursor.execute("SELECT 1 FROM inventory_host WHERE id = %s FOR UPDATE", [host.pk])
    calls = []

    def work():
        calls.append(1)
        list(Host.objects.select_for_update(nowait=True).filter(pk=host.pk))

    with pytest.raises(Busy):
        services._write(work)
    assert len(calls) == services.RETRIES


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_lost_connection_is_not_busy(other_connection):
    HostFactory(name="any")
    calls = []

    def work():
        calls.append(1)
        with other_connection.cursor() as cursor:  # the server ends Django's session
            cursor.execute(
                "SELECT pg_terminate_backend(%s)", [connection.connection.get_backend_pid()]
            )
        list(Host.objects.all())

    try:
        with pytest.raises(OperationalError) as exc:
            services._write(work)
    finally:
        connection.close()  # a fresh one for the teardown
    assert not isinstance(exc.value, Busy) and not is_lock_failure(exc.value)
    assert len(calls) == 1
