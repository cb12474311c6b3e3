"""Images as the hub carries them (``data:<mime>;base64,<b64>`` or an https URL) and as Gemini and Bedrock do."""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from urllib.parse import urlsplit

from addons.rewrite.hub import Untranslatable

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)(?:;[\w-]+=[\w.-]+)*;base64,(?P<data>.*)", re.DOTALL)


def split_data_url(url: str, field: str) -> tuple[str, str] | None:
    """``(mime, base64)`` of a base64 data URL; None for an http(s) URL; Untranslatable for anything else."""
    m = _DATA_URL.fullmatch(url)
    if m is not None:
        try:
            base64.b64decode(m["data"], validate=True)
        except (binascii.Error, ValueError):
            raise Untranslatable(field, "the data URL's payload is not valid base64") from None
        return m["mime"].lower(), m["data"]
    if urlsplit(url).scheme in ("http", "https"):
        return None
    raise Untranslatable(field, "only base64 data: URLs and http(s) URLs are images the hub carries")


def data_url(mime: str, b64: str) -> str:
    return f"data:{mime};base64,{b64}"


def guess_mime(url: str) -> str | None:
    """The media type a URL's file extension names, if any (Gemini's fileData wants one)."""
    return mimetypes.guess_type(urlsplit(url).path)[0]
