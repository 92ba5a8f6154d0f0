"""A calendar feed address is made on the account page, shown once, kept only as a hash, and
revoked there."""

import hashlib
import re

from portal.accounts.models import FeedToken

ADDRESS = re.compile(r"http://testserver/api/feeds/([A-Za-z0-9_-]{43})\.ics")


def make(client) -> tuple[object, str]:
    answer = client.post("/account/profile/feed/")
    found = ADDRESS.search(answer.content.decode())
    assert found, answer.content.decode()
    return answer, found[1]


def test_it_shows_the_address_once_and_stores_only_its_hash(client, user):
    client.force_login(user)
    answer, token = make(client)
    assert answer.status_code == 200
    assert "no-store" in answer["Cache-Control"]
    assert all(token not in morsel.value for morsel in client.cookies.values())
    stored = FeedToken.objects.get(user=user)
    assert stored.digest == hashlib.sha256(token.encode()).hexdigest()
    assert token not in {str(value) for value in vars(stored).values()}
    again = client.get("/account/profile/").content.decode()
    assert token not in again and "You have a calendar feed" in again
    assert client.get(f"/api/feeds/{token}.ics").status_code == 200


def test_a_new_address_replaces_the_old(client, user):
    client.force_login(user)
    _, old = make(client)
    _, new = make(client)
    assert new != old
    assert FeedToken.objects.filter(user=user).count() == 1
    assert client.get(f"/api/feeds/{old}.ics").status_code == 404
    assert client.get(f"/api/feeds/{new}.ics").status_code == 200


def test_it_revokes_the_address(client, user):
    client.force_login(user)
    _, token = make(client)
    answer = client.post("/account/profile/feed/revoke/", {"confirmed": "1"}, follow=True)
    assert "Calendar feed revoked" in answer.content.decode()
    assert "You have no calendar feed" in answer.content.decode()
    assert not FeedToken.objects.filter(user=user).exists()
    assert client.get(f"/api/feeds/{token}.ics").status_code == 404


def test_it_notes_when_the_feed_was_last_fetched(client, user):
    client.force_login(user)
    _, token = make(client)
    assert "not fetched yet" in client.get("/account/profile/").content.decode()
    client.get(f"/api/feeds/{token}.ics")
    assert FeedToken.objects.get(user=user).last_used is not None
    assert "last fetched" in client.get("/account/profile/").content.decode()


def test_it_takes_only_posts_from_signed_in_users(client, user):
    assert client.post("/account/profile/feed/").status_code == 302  # to the login page
    client.force_login(user)
    assert client.get("/account/profile/feed/").status_code == 405
    assert not FeedToken.objects.exists()
