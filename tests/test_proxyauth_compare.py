import hmac

import pytest
from mitmproxy.addons import proxyauth

from addons.proxy import mitmproxy_internals


@pytest.fixture(autouse=True)
def installed():
    mitmproxy_internals.install()


@pytest.mark.parametrize(
    "user, password, ok",
    [("user", "pass", True), ("user", "pasS", False), ("usr", "pass", False), ("", "", False),
     ("user", "pass\udcff", False), ("üser", "pass", False)],
)
def test_single_user_accepts_exactly_its_credentials(user, password, ok):
    assert proxyauth.SingleUser("user:pass")(user, password) is ok


def test_both_fields_are_compared_in_constant_time(monkeypatch):
    compared = []
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or a == b)
    assert not proxyauth.SingleUser("user:pass")("nobody", "pass")
    assert compared == [(b"user", b"nobody"), (b"pass", b"pass")]  # the password too, though the user differed
