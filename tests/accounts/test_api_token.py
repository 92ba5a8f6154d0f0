"""An API token is shown once, in the answer that made it, and never travels in a cookie."""

from rest_framework.authtoken.models import Token


def test_it_shows_a_new_token_once_and_keeps_it_out_of_cookies(client, user):
    client.force_login(user)
    answer = client.post("/account/profile/token/")
    token = Token.objects.get(user=user)
    assert answer.status_code == 200
    assert token.key in answer.content.decode()
    assert "no-store" in answer["Cache-Control"]
    assert all(token.key not in morsel.value for morsel in answer.cookies.values())
    assert all(token.key not in morsel.value for morsel in client.cookies.values())
    again = client.get("/account/profile/").content.decode()
    assert token.key not in again and "You have an API token" in again


def test_it_replaces_the_old_token_once_asked_first(client, user):
    client.force_login(user)
    client.post("/account/profile/token/")
    old = Token.objects.get(user=user).key
    asked = client.post("/account/profile/token/")
    assert "Replace your API token?" in asked.content.decode()
    assert Token.objects.get(user=user).key == old  # nothing yet
    client.post("/account/profile/token/", {"confirmed": "1"})
    assert Token.objects.get(user=user).key != old
