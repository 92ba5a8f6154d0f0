"""Figures of the jobs app for pages of the apps below it (accounts' project page), which may
not import jobs (docs/decisions.md, "App layers"): a template loads them by name."""

from django import template
from django.utils import timezone

from portal.jobs.selectors import quota_used

register = template.Library()


@register.simple_tag
def device_hours_used(project) -> float:
    """Device-hours the project used this month, as the scheduler counts them."""
    return quota_used(project, timezone.now())
