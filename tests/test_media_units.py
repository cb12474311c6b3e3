"""Media metering in-process: the multipart reader (in place, no copy), audio lengths, per-unit prices and
their overrides, the meter units, and each media reader on its provider's answers (errors meter nothing)."""

from __future__ import annotations

import io
import json
import math
import struct
import tracemalloc
import wave
from decimal import Decimal

import pytest
from genai_prices import Usage, calc_price

from addons.usage import audio_length, multipart
from addons.usage.readers import for_request
from pricing import meters
from pricing.cost import parse_overrides, price
from pricing.money import to_nanos
from pricing.usage import Measured, MediaUsage, TokenUsage
from tests.media_mock import make_wav


def form(*parts: tuple[str, str | None, bytes], boundary: str = "b0undary") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


# -- multipart ---------------------------------------------------------------------------------------------


def test_multipart_fields_and_files_read_in_place():
    body = form(("model", None, b"whisper-1"), ("file", "a.wav", b"RIFF\r\n--not-a-boundary"), ("stream", None, b"true"))
    assert multipart.fields(body) == {"model": "whisper-1", "stream": "true"}
    upload = multipart.first_file(body, "file")
    assert (upload.filename, bytes(upload.data)) == ("a.wav", b"RIFF\r\n--not-a-boundary")
    assert upload.data.obj is body  # a view into the body, not a copy


def test_multipart_reading_a_large_upload_allocates_almost_nothing():
    body = form(("model", None, b"whisper-1"), ("file", "big.wav", make_wav(600, rate=16000)))  # ~19 MB
    for_request("openai", "POST", "/v1/audio/transcriptions", "", form(("model", None, b"whisper-1")))  # imports
    tracemalloc.start()
    reader = for_request("openai", "POST", "/v1/audio/transcriptions", "", body)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (reader.model, reader.file_seconds) == ("whisper-1", Decimal("600.000"))
    assert peak < len(body) // 50, f"reading a {len(body)}-byte upload allocated {peak} bytes"


@pytest.mark.parametrize("body", [b"", b"{}", b"--b\r\nno headers end", b"--" + b"x" * 300, b"--b\r\n\r\n\r\n--b--"])
def test_multipart_malformed_bodies_read_as_nothing(body):
    assert multipart.fields(body) == {} and multipart.first_file(body) is None


# -- audio length ----------------------------------------------------------------------------------------


def mp3_cbr(seconds: int, kbps: int = 128) -> bytes:
    header = bytes([0xFF, 0xFB, 0x90, 0x64])  # MPEG-1 layer III, 128 kbit/s, 44.1 kHz, joint stereo
    return b"ID3\x03\x00\x00\x00\x00\x00\x0a" + bytes(10) + header + bytes(seconds * kbps * 1000 // 8 - 4)


def flac(samples: int, rate: int) -> bytes:
    packed = (rate << 44) | (2 - 1) << 41 | (16 - 1) << 36 | samples
    return b"fLaC" + b"\x80\x00\x00\x22" + bytes(10) + packed.to_bytes(8, "big") + bytes(16)


@pytest.mark.parametrize("data, seconds", [
    (make_wav(12.5), Decimal("12.500")),
    (mp3_cbr(30), Decimal("30.000")),
    (flac(44100 * 9, 44100), Decimal("9.000")),
    (b"OggS" + bytes(100), None),
    (b"RIFF\x00\x00\x00\x00WAVE", None),
    (b"", None),
])
def test_audio_length(data, seconds):
    assert audio_length.seconds(memoryview(data)) == seconds


def test_audio_length_of_a_wav_agrees_with_the_wave_module():
    data = make_wav(7.3, rate=22050)
    with wave.open(io.BytesIO(data)) as w:
        expected = Decimal(w.getnframes()) / w.getframerate()
    assert audio_length.seconds(data) == expected.quantize(Decimal("0.001"))


def test_mp3_with_a_xing_header_counts_its_frames():
    frame = bytearray(bytes([0xFF, 0xFB, 0x90, 0x64]) + bytes(413))
    frame[36:48] = b"Xing" + struct.pack(">II", 1, 1000)  # frames field present: 1000 frames of 1152 samples
    assert audio_length.seconds(bytes(frame) + bytes(5000)) == (Decimal(1000 * 1152) / 44100).quantize(Decimal("0.001"))


# -- prices --------------------------------------------------------------------------------------------


DALL_E = {"provider": "openai", "model": "dall-e-3", "per_image": {"standard/1024x1024": "0.04", "hd/*": "0.12"}}


@pytest.mark.parametrize("variant, rate", [("standard/1024x1024", "0.04"), ("hd/1792x1024", "0.12"),
                                           ("standard/512x512", "0.12")])  # unlisted: the highest rate
def test_per_image_override_by_quality_and_size(variant, rate):
    overrides = parse_overrides({"models": [DALL_E]})
    cost = price(TokenUsage(), model="dall-e-3", provider_id="openai", pricing_id="openai", overrides=overrides,
                 media=MediaUsage(images=3, image_variant=variant))
    assert (cost.total_nanos, cost.output_nanos, cost.source) == (3 * to_nanos(Decimal(rate)), cost.total_nanos, "override")


@pytest.mark.parametrize("rate, media, expected", [
    ({"per_minute": "0.006"}, MediaUsage(audio_seconds=Decimal("90.5")), Decimal("90.5") * Decimal("0.006") / 60),
    ({"per_minute": "0.007"}, MediaUsage(audio_seconds=Decimal("1")), Decimal("0.007") / 60),  # rounds once
    ({"per_mchar": "100"}, MediaUsage(characters=1234), Decimal(1234) * 100 / 1_000_000),
    ({"per_search_unit": "0.002"}, MediaUsage(search_units=3), Decimal("0.006")),
    ({"per_megapixel": "0.025"}, MediaUsage(images=2, megapixels=Decimal(3)), Decimal("0.075")),
    ({"per_second": "0.0014"}, MediaUsage(compute_seconds=Decimal("2.613")), Decimal("2.613") * Decimal("0.0014")),
])
def test_per_unit_overrides(rate, media, expected):
    overrides = parse_overrides({"models": [{"provider": "p", "model": "m", **rate}]})
    cost = price(TokenUsage(), model="m", provider_id="p", pricing_id=None, overrides=overrides, media=media)
    assert cost.total_nanos == to_nanos(expected) and cost.source == "override"


# A Realtime response: 1000 input tokens (600 audio, of which 100 cached; 200 text-cached), 500 output (400 audio)
REALTIME_USAGE = TokenUsage(input_tokens=1000, cache_read_tokens=300, output_tokens=500)
REALTIME_MEDIA = MediaUsage(input_audio_tokens=600, cache_audio_read_tokens=100, output_audio_tokens=400)
TEXT = {"input_mtok": "4", "output_mtok": "16", "cache_read_mtok": "0.4"}


@pytest.mark.parametrize("audio, input_usd, output_usd", [
    ({}, 700 * 4 + 300 * Decimal("0.4"), 500 * 16),  # no audio rates: audio bills as text
    ({"input_audio_mtok": "32", "cache_audio_read_mtok": "0.4", "output_audio_mtok": "64"},
     200 * 4 + 500 * 32 + 200 * Decimal("0.4") + 100 * Decimal("0.4"), 100 * 16 + 400 * 64),
    ({"input_audio_mtok": "32", "output_audio_mtok": "64"},  # cached audio as other cached input
     200 * 4 + 500 * 32 + 300 * Decimal("0.4"), 100 * 16 + 400 * 64),
])
def test_overrides_price_audio_tokens_at_their_own_rates(audio, input_usd, output_usd):
    overrides = parse_overrides({"models": [{"provider": "openai", "model": "my-realtime", **TEXT, **audio}]})
    cost = price(REALTIME_USAGE, model="my-realtime", provider_id="openai", pricing_id=None, overrides=overrides,
                 media=REALTIME_MEDIA)
    mtok = Decimal(1_000_000)
    assert (cost.input_nanos, cost.output_nanos) == (to_nanos(input_usd / mtok), to_nanos(output_usd / mtok))


def test_cached_audio_bills_at_the_audio_rate_when_cache_reads_have_no_rate_of_their_own():
    overrides = parse_overrides({"models": [{"provider": "openai", "model": "m", "input_mtok": "4",
                                             "output_mtok": "16", "input_audio_mtok": "32"}]})
    cost = price(REALTIME_USAGE, model="m", provider_id="openai", pricing_id=None, overrides=overrides,
                 media=REALTIME_MEDIA)
    assert cost.input_nanos == to_nanos(Decimal(400 * 4 + 600 * 32) / 1_000_000)


def test_media_units_priced_by_genai_prices_where_it_has_them():
    media = MediaUsage(characters=500)
    cost = price(TokenUsage(input_tokens=125), model="tts-1", provider_id="openai", pricing_id="openai", media=media)
    assert cost.total_nanos == to_nanos(calc_price(Usage(input_characters=500), "tts-1", provider_id="openai").total_price)


def test_reported_modality_tokens_never_exceed_their_total():
    usage, media = TokenUsage(input_tokens=10, output_tokens=5), MediaUsage(input_image_tokens=99, output_image_tokens=9)
    cost = price(usage, model="gpt-image-1", provider_id="openai", pricing_id="openai", media=media)
    expected = calc_price(Usage(input_tokens=10, input_image_tokens=10, output_tokens=5, output_image_tokens=5),
                          "gpt-image-1", provider_id="openai").total_price
    assert cost.total_nanos == to_nanos(expected)


@pytest.mark.parametrize("entry, message", [
    ({"provider": "p", "model": "m"}, "missing field"),
    ({"provider": "p", "model": "m", "per_image": {}}, "at least one"),
    ({"provider": "p", "model": "m", "per_image": {"hd/*": "-1"}}, "non-negative"),
    ({"provider": "p", "model": "m", "per_minute": "x"}, "not a decimal"),
    ({"provider": "p", "model": "m", "per_minute": "1", "per_pixel": "1"}, "unknown field"),
])
def test_bad_media_overrides_are_refused(entry, message):
    with pytest.raises(ValueError, match=message):
        parse_overrides({"models": [entry]})


@pytest.mark.parametrize("unit, measured, units", [
    ("images", Measured(TokenUsage(), images=4), Decimal(4)),
    ("search_units", Measured(TokenUsage(), search_units=2), Decimal(2)),
    ("minutes", Measured(TokenUsage(), audio_seconds=Decimal(90)), Decimal("1.5")),
    ("characters_1m", Measured(TokenUsage(), characters=321), Decimal(321)),
])
def test_meters_count_media_units(unit, measured, units):
    spec = meters.make_meter_spec("m", "fixed", unit, ["0:0.01"])
    assert meters.units_of(spec, measured) == units


# -- readers ---------------------------------------------------------------------------------------------


def test_image_reader_counts_images_and_reads_token_usage():
    reader = for_request("openai", "POST", "/v1/images/generations", "", b'{"model":"gpt-image-1","prompt":"x","n":2}')
    reader.observe_body(b'{"data":[{"b64_json":"x"},{"b64_json":"y"}],"usage":{"input_tokens":9,'
                        b'"input_tokens_details":{"text_tokens":9,"image_tokens":0},"output_tokens":272}}', "application/json")
    result = reader.result()
    assert (result.usage, result.source) == (TokenUsage(input_tokens=9, output_tokens=272), "reported")
    assert (result.media.images, result.media.output_image_tokens, reader.measured(result.usage).images) == (2, 272, 2)


def test_dall_e_reader_takes_quality_and_size_from_the_request():
    reader = for_request("openai", "POST", "/v1/images/generations", "", b'{"model":"dall-e-3","prompt":"x","size":"1792x1024"}')
    reader.observe_body(b'{"created":1,"data":[{"url":"https://x"}]}', "application/json")
    assert reader.result().media == MediaUsage(images=1, image_variant="standard/1792x1024")


def test_streamed_image_generation_counts_completed_images():
    reader = for_request("openai", "POST", "/v1/images/generations", "", b'{"model":"gpt-image-1","stream":true}')
    done = b'data: {"type":"image_generation.completed","b64_json":"x","usage":{"input_tokens":5,"output_tokens":100}}\n\n'
    for chunk in (b'data: {"type":"image_generation.partial_image","b64_json":"p"}\n\n', done[:30], done[30:], b""):
        reader.feed(chunk)
    assert (reader.result().media.images, reader.result().usage.output_tokens, reader.result().source) == (1, 100, "reported")


@pytest.mark.parametrize("family, path, request_body, answer", [
    ("openai", "/v1/images/generations", b'{"model":"dall-e-3"}', b'{"error":{"message":"content policy"}}'),
    ("openai", "/v1/audio/transcriptions", form(("model", None, b"whisper-1")), b'{"error":{"message":"bad file"}}'),
    ("openai", "/v1/audio/speech", b'{"model":"tts-1","input":"hi"}', b'{"error":{"message":"bad voice"}}'),
    ("cohere", "/v2/rerank", b'{"model":"rerank-v3.5"}', b'{"id":"x","message":"invalid request"}'),
    ("voyage", "/v1/rerank", b'{"model":"rerank-2"}', b'{"detail":"invalid model"}'),
    ("elevenlabs", "/v1/text-to-speech/v", b'{"text":"hi"}', b'{"detail":{"status":"quota_exceeded"}}'),
    ("fal", "/fal-ai/flux/dev", b'{"prompt":"x"}', b'{"detail":[{"msg":"field required"}]}'),
    ("replicate", "/v1/predictions", b'{"version":"a/b:1"}', b'{"detail":"Invalid version","status":422}'),
])
def test_media_errors_meter_nothing(family, path, request_body, answer):
    reader = for_request(family, "POST", path, "", request_body)
    reader.observe_body(answer, "application/json")
    assert (reader.result().usage, reader.result().source, reader.result().media) == (TokenUsage(), "none", None)


def test_transcription_reports_duration_or_flags_the_measured_one():
    body = form(("model", None, b"whisper-1"), ("file", "a.wav", make_wav(61)))
    reported = for_request("openai", "POST", "/v1/audio/transcriptions", "", body)
    reported.observe_body(b'{"text":"hi","usage":{"type":"duration","seconds":62}}', "application/json")
    measured = for_request("openai", "POST", "/v1/audio/transcriptions", "", body)
    measured.observe_body(b"hi\n", "text/plain")
    assert (reported.result().source, reported.result().media.audio_seconds) == ("reported", Decimal(62))
    assert (measured.result().source, measured.result().media.audio_seconds) == ("estimated", Decimal("61.000"))


def test_speech_audio_passes_through_counted_not_parsed():
    reader = for_request("openai", "POST", "/v1/audio/speech", "", b'{"model":"tts-1","input":"hello there","voice":"x"}')
    assert reader.streams_response("audio/mpeg")
    chunks = [b"data: not an event\n\n", b"\xff\xfb" * 500]
    assert [reader.feed(c) for c in chunks] == chunks and reader.feed(b"") == b""
    result = reader.result()
    assert (result.source, result.media.characters, reader.measured(result.usage).characters) == ("estimated", 11, 11)


def test_streamed_audio_has_its_length_read_from_its_first_bytes_and_its_size():
    mp3 = mp3_cbr(30)
    assert len(mp3) > audio_length.HEAD_KEPT  # only its head is kept as it streams past
    assert audio_length.seconds(mp3[:audio_length.HEAD_KEPT], len(mp3)) == Decimal("30.000")
    wav = make_wav(3.0, rate=24_000)
    streamed = wav[:4] + b"\xff\xff\xff\xff" + wav[8:40] + b"\xff\xff\xff\xff" + wav[44:]  # sizes unknown
    assert audio_length.seconds(streamed[:1000], len(streamed)) == Decimal("3.000")
    assert audio_length.pcm_seconds(60_000, 24_000) == Decimal("1.250")


@pytest.mark.parametrize("speed, seconds", [(2, Decimal(2)), (0.5, Decimal(8)), ("fast", Decimal(4)),
                                            (10, Decimal(4)), (None, Decimal(4))])
def test_speech_whose_length_the_format_hides_is_billed_as_the_text_takes_to_speak(speed, seconds):
    """60 characters are 4 s at speed 1.0 (15 a second); speed 2 halves it; a speed the API refuses is 1.0."""
    body = {"model": "gpt-4o-mini-tts", "input": "x" * 60, "voice": "alloy", "response_format": "opus"}
    if speed is not None:
        body["speed"] = speed
    reader = for_request("openai", "POST", "/v1/audio/speech", "", json.dumps(body).encode())
    assert reader.max_output_tokens == 2 * math.ceil(seconds * 20)  # a hold's worst case: twice as long (20 a second)
    reader.feed(b"OggS" + bytes(5000))
    reader.feed(b"")
    assert reader.result().usage.output_tokens == math.ceil(seconds * 20)


def test_cohere_rerank_reads_search_units():
    reader = for_request("cohere", "POST", "/v2/rerank", "", b'{"model":"rerank-v3.5","query":"q","documents":["a"]}')
    reader.observe_body(b'{"results":[],"meta":{"billed_units":{"search_units":3}}}', "application/json")
    assert (reader.result().media.search_units, reader.result().source) == (3, "reported")


@pytest.mark.parametrize("path, answer, model", [
    ("/fal-ai/flux/dev", b'{"images":[{"width":1024,"height":1024},{"width":1025,"height":1024}]}', "fal-ai/flux/dev"),
])
def test_fal_megapixels_round_up_per_image(path, answer, model):
    reader = for_request("fal", "POST", path, "", b'{"prompt":"x"}')
    reader.observe_body(answer, "application/json")
    assert (reader.result().model, reader.result().media.images, reader.result().media.megapixels) == (model, 2, 3)


@pytest.mark.parametrize("method, path, endpoint", [
    ("GET", "/fal-ai/flux/dev/requests/abc", "fal.queue.result"),
    ("GET", "/fal-ai/flux/dev/requests/abc/status", "other"),
    ("POST", "/v1/models/a/b/predictions", "replicate.predictions"),
])
def test_queue_and_prediction_endpoints(method, path, endpoint):
    family = "replicate" if "predictions" in path else "fal"
    assert for_request(family, method, path, "", b"").endpoint == endpoint
