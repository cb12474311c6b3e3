"""`--proxyauth user:pass` compared in constant time.

mitmproxy's SingleUser validator compares the credentials with `==`, which returns at the first
differing character: how long a refusal takes tells an attacker how much of a guess was right.
The gateway replaces that one method, once per process, with hmac.compare_digest on both fields.
htpasswd and LDAP validators are left as they are (they compare hashes or ask the server).
"""

from __future__ import annotations

import hmac

from mitmproxy.addons import proxyauth


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


def _single_user_check(self: proxyauth.SingleUser, username: str, password: str) -> bool:
    same_user = _same(self.username, username)  # both compared, whatever the first says
    return _same(self.password, password) & same_user


def install() -> None:
    _single_user_check.tollgate = True
    proxyauth.SingleUser.__call__ = _single_user_check
