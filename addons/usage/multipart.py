"""The small fields of a multipart/form-data upload, read in place.

Audio transcriptions and image edits upload files of up to the body limit. mitmproxy already
holds the body once; this reads it through a memoryview, so the file parts are never copied:
text fields are decoded (they are short), file parts come back as views into the body.
The boundary is the body's own first line, so no header is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_FIELD = 64 * 1024  # longer text fields are left undecoded (a prompt is far shorter)
MAX_HEADERS = 8 * 1024  # of one part


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    filename: str | None
    data: memoryview  # a view into the body: no copy


def parts(body: bytes) -> list[Part]:
    """The parts of a multipart body; [] if it is not one. Never raises on malformed input."""
    if not body.startswith(b"--"):
        return []
    end = body.find(b"\r\n", 0, 256)
    if end < 3:
        return []
    delimiter = b"\r\n" + body[:end]  # "\r\n--boundary"
    view, found, pos = memoryview(body), [], end + 2
    while pos < len(body):
        head_end = body.find(b"\r\n\r\n", pos, pos + MAX_HEADERS)
        if head_end < 0:
            break
        name, filename = _disposition(body[pos:head_end])
        data_end = body.find(delimiter, head_end + 4)
        if data_end < 0:
            break
        if name is not None:
            found.append(Part(name, filename, view[head_end + 4:data_end]))
        pos = data_end + len(delimiter)
        if body[pos:pos + 2] == b"--":  # the closing delimiter
            break
        pos += 2  # the CRLF after the delimiter
    return found


def fields(body: bytes) -> dict[str, str]:
    """The text fields (not files) of a multipart body, by name; the first of a repeated name."""
    out: dict[str, str] = {}
    for part in parts(body):
        if part.filename is None and len(part.data) <= MAX_FIELD and part.name not in out:
            out[part.name] = bytes(part.data).decode("utf-8", "replace")
    return out


def first_file(body: bytes, name: str | None = None) -> Part | None:
    """The first file part (named `name`, if given)."""
    return next((p for p in parts(body) if p.filename is not None and (name is None or p.name == name)), None)


def _disposition(headers: bytes) -> tuple[str | None, str | None]:
    """(name, filename) of a part's Content-Disposition header."""
    for line in headers.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() != b"content-disposition":
            continue
        params: dict[str, str] = {}
        for item in value.decode("utf-8", "replace").split(";")[1:]:
            k, _, v = item.strip().partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        return params.get("name"), params.get("filename")
    return None, None
