import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
application = get_wsgi_application()
settings.SECRET_KEY  # noqa: B018  (raises ImproperlyConfigured when unset: fail at start)
