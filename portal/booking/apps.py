from django.apps import AppConfig


class BookingConfig(AppConfig):
    name = "portal.booking"
    label = "booking"
