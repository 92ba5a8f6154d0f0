from django.urls import path

from portal.accounts import views

app_name = "accounts"
urlpatterns = [
    path("profile/", views.profile, name="profile"),
    path("profile/token/", views.api_token_rotate, name="api_token_rotate"),
    path("keys/", views.ssh_keys, name="ssh_keys"),
    path("keys/<int:key_id>/delete/", views.ssh_key_delete, name="ssh_key_delete"),
]
