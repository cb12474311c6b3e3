"""How long an uploaded audio file plays, read from its headers: what a per-minute transcription is
billed by when the provider's answer does not say (a duration measured here is flagged "estimated").

Cheap by design: WAV and FLAC state it in their header; MP3 in its Xing/Info or VBRI frame, else it
is taken as constant bit rate from the first frame. Anything else is unknown (None). Reads a
memoryview (a multipart part in place) and touches only the first few kilobytes. The same reads the
length of speech a provider answers with, from the first kilobytes kept as it streams past and the
count of all its bytes (`seconds(head, total)`), and raw PCM's from its count alone.
"""

from __future__ import annotations

import struct
from decimal import Decimal

_SCAN = 64 * 1024  # bytes searched for an MP3 frame after an ID3 tag

# MPEG-1 layer III bit rates (kbit/s) by index; MPEG-2/2.5 layer III below
_MPEG1_L3 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 0)
_MPEG2_L3 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160, 0)
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}  # by version bits


HEAD_KEPT = _SCAN + 4096  # bytes of streamed audio to keep for `seconds`: an ID3 tag's worth, and a frame


def seconds(data: memoryview | bytes, total: int | None = None) -> Decimal | None:
    """The duration in seconds (to the millisecond), or None when the format or its header is not understood.
    `total`: the whole audio's length in bytes, where `data` is only its first HEAD_KEPT bytes."""
    head = bytes(data[:12])
    size = len(data) if total is None else total
    try:
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            value = _wav(data, size)
        elif head[:4] == b"fLaC":
            value = _flac(data)
        else:
            value = _mp3(data, size)
    except (struct.error, IndexError, ZeroDivisionError):
        return None
    return None if value is None or value < 0 else value.quantize(Decimal("0.001"))


def pcm_seconds(size: int, rate: int, sample_bytes: int = 2, channels: int = 1) -> Decimal:
    """Raw PCM has no header: its length is its size over its byte rate."""
    return (Decimal(size) / Decimal(rate * sample_bytes * channels)).quantize(Decimal("0.001"))


def _wav(data: memoryview | bytes, total: int) -> Decimal | None:
    pos, byte_rate = 12, None
    while pos + 8 <= min(len(data), _SCAN):
        chunk_id, size = bytes(data[pos:pos + 4]), struct.unpack_from("<I", data, pos + 4)[0]
        if chunk_id == b"fmt ":
            byte_rate = struct.unpack_from("<I", data, pos + 16)[0]
        elif chunk_id == b"data" and byte_rate:
            size = min(size, total - pos - 8)  # a streamed WAV may say 0xFFFFFFFF
            return Decimal(size) / Decimal(byte_rate)
        pos += 8 + size + (size & 1)
    return None


def _flac(data: memoryview | bytes) -> Decimal | None:
    # STREAMINFO: the first metadata block; sample rate (20 bits) and total samples (36 bits) at offset 18
    packed = int.from_bytes(bytes(data[18:26]), "big")
    rate, total = packed >> 44, packed & ((1 << 36) - 1)
    return Decimal(total) / Decimal(rate) if rate and total else None


def _mp3(data: memoryview | bytes, total: int) -> Decimal | None:
    start = 0
    if bytes(data[:3]) == b"ID3":  # ID3v2 tag: its size is four 7-bit bytes
        size = bytes(data[6:10])
        start = 10 + (size[0] << 21 | size[1] << 14 | size[2] << 7 | size[3])
    window = bytes(data[start:start + _SCAN])
    for i in range(len(window) - 4):
        if window[i] == 0xFF and window[i + 1] & 0xE0 == 0xE0:
            frame = _frame(window[i:i + 4])
            if frame is not None:
                return _mp3_length(window, i, total - start - i, *frame)
    return None


def _frame(header: bytes) -> tuple[int, int, int, int] | None:
    """(version bits, bit rate in bit/s, sample rate, samples per frame) of a layer III frame header."""
    version, layer = header[1] >> 3 & 3, header[1] >> 1 & 3
    bitrate_index, rate_index = header[2] >> 4, header[2] >> 2 & 3
    if version == 1 or layer != 1 or rate_index == 3 or bitrate_index in (0, 15):
        return None
    kbps = (_MPEG1_L3 if version == 3 else _MPEG2_L3)[bitrate_index]
    return version, kbps * 1000, _RATES[version][rate_index], 1152 if version == 3 else 576


def _mp3_length(window: bytes, at: int, audio_bytes: int, version: int, bitrate: int, rate: int,
                samples: int) -> Decimal:
    """Frames counted by a Xing/Info or VBRI header, else constant bit rate over the audio's bytes."""
    mono = window[at + 3] >> 6 == 3
    side = (17 if mono else 32) if version == 3 else (9 if mono else 17)
    xing = at + 4 + side
    if window[xing:xing + 4] in (b"Xing", b"Info") and struct.unpack_from(">I", window, xing + 4)[0] & 1:
        frames = struct.unpack_from(">I", window, xing + 8)[0]
        return Decimal(frames * samples) / Decimal(rate)
    if window[at + 36:at + 40] == b"VBRI":
        frames = struct.unpack_from(">I", window, at + 36 + 14)[0]
        return Decimal(frames * samples) / Decimal(rate)
    return Decimal(audio_bytes * 8) / Decimal(bitrate)
