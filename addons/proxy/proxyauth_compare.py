"""`--proxyauth user:pass` compared in constant time: what compare_single_user_with in
addons/proxy/mitmproxy_internals.py (which says why) puts in mitmproxy's SingleUser validator.
"""

from __future__ import annotations

import hmac


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def same_credentials(expected_user: str, expected_password: str, username: str, password: str) -> bool:
    same_user = _same(expected_user, username)  # both compared, whatever the first says
    return _same(expected_password, password) & same_user
