"""The Sites record follows SITE_URL and SITE_NAME, so allauth's mails and links name this
portal ("Hello from Debian porterbox portal!"), not Django's default "example.com".

Written after every `migrate` (the README's deploy step), so a changed SITE_URL takes effect at
the next deploy without an admin edit.
"""

from urllib.parse import urlsplit

from django.conf import settings


def sync_site(using="default", **kwargs) -> None:
    from django.contrib.sites.models import Site

    domain = urlsplit(settings.SITE_URL).netloc or "localhost"
    Site.objects.using(using).update_or_create(
        pk=settings.SITE_ID, defaults={"domain": domain, "name": settings.SITE_NAME}
    )
    Site.objects.clear_cache()
