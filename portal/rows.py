"""Several models' rows read by one hand-written query: their columns to select, and the
model instances built back from a row's slices, as a queryset would build them.

For the few hot paths (a submission, a booking) that need a project, a stack, a host and a
check or two at once, where the ORM would make a round trip for each.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Model

M = TypeVar("M", bound=Model)
# Per database connection (its converters are its own bound methods) and model: each column
# with the conversions a queryset applies to it, looked up once instead of on every row.
_Plan = list[tuple[Any, list[Callable]]]
_plans: WeakKeyDictionary[Any, dict[type[Model], _Plan]] = WeakKeyDictionary()


def columns(model: type[Model], alias: str) -> str:
    """The model's columns, qualified by `alias`, in field order (what `instance` reads)."""
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(f.column)}" for f in model._meta.concrete_fields)


def width(model: type[Model]) -> int:
    return len(model._meta.concrete_fields)


def table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _plan(model: type[Model]) -> tuple[Any, _Plan]:
    wrapper = connections[DEFAULT_DB_ALIAS]
    plans = _plans.setdefault(wrapper, {})
    if model not in plans:
        plan = []
        for field in model._meta.concrete_fields:
            column = field.get_col(model._meta.db_table)  # as the queryset's compiler does
            converters = wrapper.ops.get_db_converters(column) + column.get_db_converters(wrapper)
            plan.append((column, converters))
        plans[model] = plan
    return wrapper, plans[model]


def instance(model: type[M], values: Sequence) -> M | None:
    """The model built from its columns' values (as `columns` lists them) with the
    conversions a queryset applies (a JSON column's text parsed, SQLite's dates and
    decimals, ...); None where the row had none (an outer join that found nothing: its
    primary key is NULL)."""
    fields = model._meta.concrete_fields
    if values[fields.index(model._meta.pk)] is None:
        return None
    wrapper, plan = _plan(model)
    converted = []
    for (column, converters), value in zip(plan, values, strict=True):
        for convert in converters:
            value = convert(value, column, wrapper)
        converted.append(value)
    return model.from_db(wrapper.alias, [f.attname for f in fields], converted)


def fetch_one(sql: str, params: Sequence, *models: type[Model]) -> tuple[list, tuple]:
    """Run `sql`, whose one row holds each of `models`' columns in turn (as `columns` lists
    them) and then other values: the instances (None where an outer join found nothing) and
    the other values."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    found, at = [], 0
    for model in models:
        found.append(instance(model, row[at : at + width(model)]))
        at += width(model)
    return found, tuple(row[at:])
