from tests.notifications.receivers import hanging_smtp, smtp  # noqa: F401 - fixtures
