import pytest

from provisioning.accounts import unix_name


@pytest.mark.parametrize(
    ("username", "user_id", "expected"),
    [
        ("alice", 3, "alice"),
        ("root", 4, "u4"),  # a system account is never handed out
        ("Alice", 5, "u5"),  # not a portal-safe Unix name
        ("a.b", 6, "u6"),
        ("x" * 32, 7, "u7"),  # too long for useradd
        ("u8", 9, "u9"),  # would collide with the fallback of user 8
        ("pj-3", 10, "u10"),  # would be the job account of partner project 3
    ],
)
def test_it_derives_a_safe_unique_unix_name(username, user_id, expected):
    assert unix_name(username, user_id) == expected
