"""The porterbox portal: a Django project for shared accelerator hosts."""

from portal.celery import app as celery_app

__all__ = ["celery_app"]
