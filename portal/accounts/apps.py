from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "portal.accounts"
    label = "accounts"

    def ready(self):
        from django.db.models.signals import post_migrate

        from portal.accounts import salsa  # noqa: F401  (connects the login signal)
        from portal.accounts.sites import sync_site

        # After the sites app's own post_migrate, which creates example.com.
        post_migrate.connect(sync_site, sender=self, dispatch_uid="portal.accounts.sync_site")
