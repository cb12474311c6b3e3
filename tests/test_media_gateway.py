"""Every media modality end to end: the official SDK (openai, cohere) or httpx as the client, the real gateway
process, the media mock speaking each provider's wire format (tests/media_mock.py). Each test checks what the
ledger recorded (usage, units, the usage and price source) and the cost against a price computed here from
genai-prices or from pricing/overrides.yaml read as plain YAML, never through Tollgate's pricing."""

from __future__ import annotations

import json
import math
import uuid
from decimal import Decimal
from pathlib import Path

import cohere
import httpx
import openai
import pytest
import yaml
from genai_prices import Usage, calc_price
from google import genai
from google.genai import types

from pricing.money import format_usd, to_nanos
from tests.harness import GatewayProcess, gateways_by_backend
from tests.ledger_reads import wait_for
from tests.media_mock import (
    GEMINI_IMAGE_USAGE,
    IMAGE_EDIT_USAGE,
    IMAGE_USAGE,
    REPLICATE_PREDICT_TIME,
    RETRIEVAL_TOKENS,
    SPEECH_CHUNKS,
    SPEECH_USAGE,
    TRANSCRIBE_USAGE,
    MediaMock,
    make_wav,
    wav_seconds,
)

pytestmark = pytest.mark.e2e

MEDIA_PROVIDERS = ("openai", "gemini", "cohere", "elevenlabs", "voyage", "jina", "fal", "fal-queue", "replicate")
MEDIA_KEYS = {"ELEVENLABS_API_KEY": "el-real-0123456789", "VOYAGE_API_KEY": "pa-real-0123456789",
              "JINA_API_KEY": "jina_real_0123456789", "FAL_KEY": "fal-real:0123456789",
              "REPLICATE_API_TOKEN": "r8_real0123456789"}
REPLICATE_PRICE = {"provider": "replicate", "model": "black-forest-labs/flux-schnell", "per_second": "0.0014"}
OVERRIDES = yaml.safe_load((Path(__file__).resolve().parent.parent / "pricing" / "overrides.yaml").read_text())


def override(provider: str, model: str) -> dict:
    """The shipped override entry named exactly so (the test names the entry it expects to apply)."""
    return next(e for e in OVERRIDES["models"] if (e["provider"], e["model"]) == (provider, model))


def usd(value) -> Decimal:
    return Decimal(str(value))


@pytest.fixture(scope="module")
def media_mock():
    with MediaMock() as mock:
        yield mock


@pytest.fixture(scope="module")
def gateways(media_mock, tmp_path_factory):
    """The module's gateways by ledger backend, each started when first asked for."""

    def make(tmp, url):
        gateway = GatewayProcess(tmp, url, {p: media_mock.url for p in MEDIA_PROVIDERS}, prices=[REPLICATE_PRICE])
        gateway.env.update(MEDIA_KEYS)
        return gateway

    with gateways_by_backend(tmp_path_factory, "media", make) as get:
        yield get


@pytest.fixture(params=["sqlite", "postgresql"])
def gw(gateways, request):
    """A gateway on each ledger backend: every modality is recorded and priced the same on both."""
    return gateways(request.param)


def forward(gw, base: str) -> str:
    return f"{gw.url}/v1/forward?u={base}"


def new_row(gw, before: set[str], provider: str) -> dict:
    return wait_for(lambda: [r for r in gw.ledger.requests() if r["id"] not in before and r["provider"] == provider],
                    what=f"a new {provider} row")[0]


def ids(gw) -> set[str]:
    return {r["id"] for r in gw.ledger.requests()}


def assert_cost(row: dict, expected_usd: Decimal, usage_source: str, price_source: str, status: int = 200) -> None:
    assert (row["status"], row["usage_source"], row["price_source"]) == (status, usage_source, price_source)
    assert row["provider_cost"] == format_usd(to_nanos(expected_usd)) and to_nanos(expected_usd) > 0


# -- images ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_gpt_image_generation_is_priced_by_its_token_usage(gateways, media_mock, backend):
    gw = gateways(backend)
    client = openai.OpenAI(api_key=gw.admin_key, base_url=forward(gw, "https://api.openai.com/v1"))
    raw = client.images.with_raw_response.generate(model="gpt-image-1", prompt="a lighthouse", n=2)
    assert len(raw.parse().data) == 2
    row = gw.request_row(raw.headers["x-lava-request-id"])
    assert (row["endpoint"], row["model"], row["images"]) == ("images.generations", "gpt-image-1", 2)
    assert (row["input_tokens"], row["output_tokens"]) == (IMAGE_USAGE["input_tokens"], IMAGE_USAGE["output_tokens"])
    expected = calc_price(Usage(input_tokens=50, input_image_tokens=0, output_tokens=4160, output_image_tokens=4160),
                          "gpt-image-1", provider_id="openai").total_price
    assert_cost(row, expected, "reported", "catalog")
    assert media_mock.last.headers["authorization"] == "Bearer sk-real-openai-0123456789"


def test_gpt_image_edit_uploads_multipart_and_prices_image_input_tokens(gw):
    client = openai.OpenAI(api_key=gw.admin_key, base_url=forward(gw, "https://api.openai.com/v1"))
    image = ("photo.png", b"\x89PNG\r\n\x1a\n" + bytes(300_000), "image/png")
    raw = client.images.with_raw_response.edit(model="gpt-image-1", image=image, prompt="add a hat")
    row = gw.request_row(raw.headers["x-lava-request-id"])
    assert (row["endpoint"], row["images"], row["input_tokens"]) == ("images.edits", 1, IMAGE_EDIT_USAGE["input_tokens"])
    expected = calc_price(Usage(input_tokens=323, input_image_tokens=258, output_tokens=4160, output_image_tokens=4160),
                          "gpt-image-1", provider_id="openai").total_price
    assert_cost(row, expected, "reported", "catalog")


@pytest.mark.parametrize("quality, size", [("hd", "1024x1792"), ("standard", "1024x1024")])
def test_dall_e_3_is_priced_per_image_by_quality_and_size(gw, quality, size):
    client = openai.OpenAI(api_key=gw.admin_key, base_url=forward(gw, "https://api.openai.com/v1"))
    raw = client.images.with_raw_response.generate(model="dall-e-3", prompt="a fox", n=1, quality=quality, size=size)
    row = gw.request_row(raw.headers["x-lava-request-id"])
    assert (row["images"], row["input_tokens"], row["output_tokens"]) == (1, 0, 0)
    assert_cost(row, usd(override("openai", "dall-e-3")["per_image"][f"{quality}/{size}"]), "reported", "override")
    assert row["media_usage"] == {"images": 1, "image_variant": f"{quality}/{size}"}  # what reprice would price


def test_gemini_image_output_tokens_are_priced_at_the_image_rate(gw, media_mock):
    before = ids(gw)
    client = genai.Client(api_key=gw.admin_key,
                          http_options={"base_url": forward(gw, "https://generativelanguage.googleapis.com")})
    answer = client.models.generate_content(model="gemini-2.5-flash-image", contents="a red kite",
                                            config=types.GenerateContentConfig(response_modalities=["IMAGE"]))
    assert answer.candidates[0].content.parts[0].inline_data.mime_type == "image/png"
    assert media_mock.last.headers["x-goog-api-key"] == "AIza-real-gemini-0123456789"
    row = new_row(gw, before, "gemini")
    assert (row["input_tokens"], row["output_tokens"]) == (12, GEMINI_IMAGE_USAGE["candidatesTokenCount"])
    expected = calc_price(Usage(input_tokens=12, output_tokens=1290, output_image_tokens=1290),
                          "gemini-2.5-flash-image", provider_id="google").total_price
    assert_cost(row, expected, "reported", "catalog")


def test_fal_images_are_priced_per_megapixel_rounded_up(gw):
    body = {"prompt": "a castle", "num_images": 2, "image_size": {"width": 1536, "height": 1024}}
    answer = httpx.post(forward(gw, "https://fal.run/fal-ai/flux/dev"), json=body,
                        headers={"authorization": f"Key {gw.admin_key}"}, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["images"]) == 2
    row = gw.request_row(answer.headers["x-lava-request-id"])
    megapixels = 2 * math.ceil(1536 * 1024 / (1024 * 1024))  # fal rounds each image up to whole megapixels
    assert (row["model"], row["images"]) == ("fal-ai/flux/dev", 2)
    assert_cost(row, megapixels * usd(override("fal", "fal-ai/flux/dev")["per_megapixel"]), "reported", "override")


def test_fal_queue_result_is_metered_when_fetched(gw, media_mock):
    headers = {"authorization": f"Key {gw.admin_key}", "x-mock-queue": "1"}
    submit = httpx.post(forward(gw, "https://queue.fal.run/fal-ai/flux/schnell"), json={"prompt": "x"},
                        headers=headers, timeout=30)
    submitted = gw.request_row(submit.headers["x-lava-request-id"])
    assert (submitted["endpoint"], submitted["images"], submitted["provider_cost"]) == ("fal.queue.submit", 0, "0.00")
    assert media_mock.last.headers["authorization"] == "Key fal-real:0123456789"
    result = httpx.get(forward(gw, submit.json()["response_url"]), headers=headers, timeout=30)
    row = gw.request_row(result.headers["x-lava-request-id"])
    assert (row["endpoint"], row["images"]) == ("fal.queue.result", 1)
    assert_cost(row, usd(override("fal-queue", "fal-ai/flux/schnell")["per_megapixel"]), "reported", "override")


# -- audio transcription -------------------------------------------------------------------------------


def test_whisper_verbose_json_is_priced_per_minute_of_the_reported_duration(gw):
    audio = make_wav(75.5)
    client = openai.OpenAI(api_key=gw.admin_key, base_url=forward(gw, "https://api.openai.com/v1"))
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("a.wav", audio, "audio/wav"),
                                                               response_format="verbose_json")
    assert raw.parse().duration == wav_seconds(audio)
    row = gw.request_row(raw.headers["x-lava-request-id"])
    assert (row["endpoint"], row["input_duration_ms"]) == ("audio.transcriptions", 75_500)
    expected = calc_price(Usage(audio_seconds=usd(wav_seconds(audio))), "whisper-1", provider_id="openai").total_price
    assert_cost(row, expected, "reported", "catalog")


def test_whisper_text_answer_is_priced_by_the_uploaded_files_length_and_flagged(gw):
    audio = make_wav(42.25)
    client = openai.OpenAI(api_key=gw.admin_key, base_url=forward(gw, "https://api.openai.com/v1"))
    raw = client.audio.translations.with_raw_response.create(model="whisper-1", file=("a.wav", audio, "audio/wav"),
                                                             response_format="text")
    row = gw.request_row(raw.headers["x-lava-request-id"])
    assert (row["endpoint"], row["input_duration_ms"]) == ("audio.translations", 42_250)
    expected = calc_price(Usage(audio_seconds=usd(wav_seconds(audio))), "whisper-1", provider_id="openai").total_price
    assert_cost(row, expected, "estimated", "catalog")  # measured, not reported: flagged


def test_gpt_4o_transcribe_is_priced_by_its_audio_tokens(gw):
    client = openai.OpenAI(api_key=gw.admin_key, base_url=forward(gw, "https://api.openai.com/v1"))
    raw = client.audio.transcriptions.with_raw_response.create(
        model="gpt-4o-transcribe", file=("a.wav", make_wav(3), "audio/wav"))
    row = gw.request_row(raw.headers["x-lava-request-id"])
    assert (row["input_tokens"], row["output_tokens"]) == (TRANSCRIBE_USAGE["input_tokens"], TRANSCRIBE_USAGE["output_tokens"])
    expected = calc_price(Usage(input_tokens=114, input_audio_tokens=114, output_tokens=45), "gpt-4o-transcribe",
                          provider_id="openai").total_price
    assert_cost(row, expected, "reported", "catalog")


# -- speech ---------------------------------------------------------------------------------------------


def test_tts_audio_streams_unbuffered_and_is_priced_per_character(gw, media_mock):
    text = "The quick brown fox jumps over the lazy dog, twice over."
    client = openai.OpenAI(api_key=gw.admin_key, base_url=forward(gw, "https://api.openai.com/v1"))
    media_mock.release_speech.clear()
    media_mock.rest_sent.clear()
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=text) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        assert first and not media_mock.rest_sent.is_set(), "the first audio reached the client only after the rest"
        media_mock.release_speech.set()
        audio = first + b"".join(chunks)
        request_id = response.headers["x-lava-request-id"]
    assert len(audio) == SPEECH_CHUNKS * 2048
    row = gw.request_row(request_id)
    assert (row["endpoint"], row["input_characters"], row["streamed"]) == ("audio.speech", len(text), True)
    expected = calc_price(Usage(input_characters=len(text)), "tts-1", provider_id="openai").total_price
    assert_cost(row, expected, "estimated", "catalog")


def test_gpt_4o_mini_tts_sse_stream_is_priced_by_its_reported_tokens(gw):
    client = openai.OpenAI(api_key=gw.admin_key, base_url=forward(gw, "https://api.openai.com/v1"))
    with client.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="alloy", input="hello",
                                                            stream_format="sse") as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
        request_id = response.headers["x-lava-request-id"]
    assert events[-1] == {"type": "speech.audio.done", "usage": SPEECH_USAGE}
    row = gw.request_row(request_id)
    assert (row["input_tokens"], row["output_tokens"]) == (14, 101)
    expected = calc_price(Usage(input_tokens=14, output_tokens=101), "gpt-4o-mini-tts", provider_id="openai").total_price
    assert_cost(row, expected, "reported", "catalog")


AUDIO_TOKENS_PER_SECOND = 20  # OpenAI counts output audio at one token per 50 ms


@pytest.mark.parametrize("response_format", ["mp3", "wav", "pcm", "opus"])
def test_gpt_4o_mini_tts_without_sse_is_billed_for_the_audio_it_made(gw, response_format):
    """Without SSE the provider reports no usage: the output audio tokens are billed by how long the audio plays
    (mp3 at its bit rate, wav by its byte rate, pcm at 24 kHz 16-bit), and where the format does not say (opus),
    by how long the text takes to speak; the input tokens by the text and the instructions."""
    text, instructions = "Tollgate bills speech by how long it plays, not only by its text.", "Speak calmly."
    client = openai.OpenAI(api_key=gw.admin_key, base_url=forward(gw, "https://api.openai.com/v1"))
    with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="alloy", input=text, instructions=instructions,
            response_format=response_format) as response:
        audio = response.read()
        request_id = response.headers["x-lava-request-id"]
    seconds = {"mp3": Decimal(len(audio) * 8) / 128_000,  # the mock's frames: 128 kbit/s
               "wav": Decimal(len(audio) - 44) / 48_000,  # 24 kHz 16-bit mono after a 44-byte header
               "pcm": Decimal(len(audio)) / 48_000,
               "opus": Decimal(len(text)) / 15}[response_format]  # 15 characters a second at speed 1.0
    output_tokens = math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)
    input_tokens = math.ceil((len(text) + len(instructions)) / 4)
    row = gw.request_row(request_id)
    assert (row["input_tokens"], row["output_tokens"], row["input_characters"]) == (input_tokens, output_tokens,
                                                                                      len(text))
    expected = calc_price(Usage(input_tokens=input_tokens, output_tokens=output_tokens), "gpt-4o-mini-tts",
                          provider_id="openai").total_price
    assert_cost(row, expected, "estimated", "catalog")
    assert to_nanos(expected) > 2 * to_nanos(calc_price(Usage(input_tokens=input_tokens), "gpt-4o-mini-tts",
                                                        provider_id="openai").total_price)  # the audio is most of it


@pytest.mark.parametrize("path", ["/v1/text-to-speech/voice-1", "/v1/text-to-speech/voice-1/stream"])
def test_elevenlabs_speech_streams_and_is_priced_per_character(gw, media_mock, path):
    text = "Bonjour tout le monde"
    with httpx.stream("POST", forward(gw, f"https://api.elevenlabs.io{path}"), timeout=30,
                      json={"text": text, "model_id": "eleven_multilingual_v2"},
                      headers={"xi-api-key": gw.admin_key}) as response:
        audio = b"".join(response.iter_bytes())
    assert response.status_code == 200 and len(audio) == SPEECH_CHUNKS * 2048
    assert media_mock.last.headers["xi-api-key"] == MEDIA_KEYS["ELEVENLABS_API_KEY"]
    row = gw.request_row(response.headers["x-lava-request-id"])
    assert (row["model"], row["input_characters"], row["streamed"]) == ("eleven_multilingual_v2", len(text), True)
    rate = usd(override("elevenlabs", "eleven_*")["per_mchar"])
    assert_cost(row, len(text) * rate / 1_000_000, "estimated", "override")


# -- rerank and retrieval ----------------------------------------------------------------------------------


def test_cohere_rerank_through_the_sdk_is_priced_per_search_unit(gw, media_mock, monkeypatch):
    """Through HTTPS_PROXY, as an unmodified app (the cohere SDK's base_url joining drops a query string)."""
    monkeypatch.setenv("HTTPS_PROXY", gw.url)
    monkeypatch.setenv("SSL_CERT_FILE", str(gw.ca))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    before = ids(gw)
    client = cohere.ClientV2(api_key=gw.admin_key)
    documents = [f"document {i}" for i in range(150)]  # Cohere bills a search unit per 100 documents
    answer = client.rerank(model="rerank-v3.5", query="which?", documents=documents, top_n=1)
    assert answer.meta.billed_units.search_units == 2
    assert media_mock.last.headers["authorization"] == "Bearer co-real-0123456789"
    row = new_row(gw, before, "cohere")
    assert (row["endpoint"], row["model"], row["search_units"]) == ("cohere.rerank", "rerank-v3.5", 2)
    assert_cost(row, 2 * usd(override("cohere", "rerank-*")["per_search_unit"]), "reported", "override")


@pytest.mark.parametrize("provider, url, model, body, expected", [
    ("voyage", "https://api.voyageai.com/v1/rerank", "rerank-2", {"query": "q", "documents": ["a", "b"]},
     lambda: RETRIEVAL_TOKENS * usd(override("voyage", "rerank-*")["input_mtok"]) / 1_000_000),
    ("voyage", "https://api.voyageai.com/v1/embeddings", "voyage-3", {"input": ["a", "b"]},
     lambda: calc_price(Usage(input_tokens=RETRIEVAL_TOKENS), "voyage-3", provider_id="voyageai").total_price),
    ("jina", "https://api.jina.ai/v1/rerank", "jina-reranker-v2-base-multilingual", {"query": "q", "documents": ["a"]},
     lambda: RETRIEVAL_TOKENS * usd(override("jina", "*")["input_mtok"]) / 1_000_000),
    ("jina", "https://api.jina.ai/v1/embeddings", "jina-embeddings-v3", {"input": ["a"]},
     lambda: RETRIEVAL_TOKENS * usd(override("jina", "*")["input_mtok"]) / 1_000_000),
])
def test_voyage_and_jina_are_priced_per_token(gw, media_mock, provider, url, model, body, expected):
    answer = httpx.post(forward(gw, url), json={"model": model, **body}, timeout=30,
                        headers={"authorization": f"Bearer {gw.admin_key}"})
    assert answer.status_code == 200
    assert media_mock.last.headers["authorization"] == f"Bearer {MEDIA_KEYS[provider.upper() + '_API_KEY']}"
    row = gw.request_row(answer.headers["x-lava-request-id"])
    assert (row["model"], row["input_tokens"], row["output_tokens"]) == (model, RETRIEVAL_TOKENS, 0)
    assert_cost(row, expected(), "reported", "override" if provider == "jina" or "rerank" in url else "catalog")


# -- Replicate ----------------------------------------------------------------------------------------------


def test_replicate_prediction_is_priced_per_second_of_predict_time_by_an_override(gw):
    url = forward(gw, "https://api.replicate.com/v1/models/black-forest-labs/flux-schnell/predictions")
    answer = httpx.post(url, json={"input": {"prompt": "a cat"}}, timeout=30,
                        headers={"authorization": f"Bearer {gw.admin_key}", "prefer": "wait"})
    assert answer.status_code == 201 and answer.json()["status"] == "succeeded"
    row = gw.request_row(answer.headers["x-lava-request-id"])
    assert (row["model"], row["images"]) == ("black-forest-labs/flux-schnell", 1)
    assert_cost(row, usd(REPLICATE_PREDICT_TIME) * usd(REPLICATE_PRICE["per_second"]), "reported", "override", 201)


def test_replicate_model_without_a_price_passes_through_flagged_unpriced(gw):
    url = forward(gw, "https://api.replicate.com/v1/models/stability-ai/sdxl/predictions")
    answer = httpx.post(url, json={"input": {"prompt": "a cat"}}, timeout=30,
                        headers={"authorization": f"Bearer {gw.admin_key}"})
    assert answer.status_code == 201 and answer.json()["status"] == "starting"
    row = gw.request_row(answer.headers["x-lava-request-id"])
    assert (row["model"], row["usage_source"], row["price_source"], row["provider_cost"]) == (
        "stability-ai/sdxl", "none", "unpriced", None)


# -- customers billed by media meters, held before the answer ----------------------------------------------


def billed_customer(gw, balance: str, *meter_args: str) -> str:
    """A signed token for a new customer with `balance`, billed by a new meter."""
    suffix = uuid.uuid4().hex[:8]
    gw.cli("customers", "create", f"cus-{suffix}", "--balance", balance)
    gw.cli("meters", "create", f"m-{suffix}", *meter_args)
    return gw.cli_json("token", "--secret-key", gw.admin_key, "--customer", f"cus-{suffix}",
                       "--meter", f"m-{suffix}")["token"]


def generate(gw, token: str, **args) -> httpx.Response:
    return httpx.post(forward(gw, "https://api.openai.com/v1/images/generations"), timeout=30,
                      headers={"authorization": f"Bearer {token}"}, json={"prompt": "a fox", **args})


def test_images_meter_charges_per_image_and_holds_the_images_asked_for(gw):
    token = billed_customer(gw, "1.20", "--rate-type", "fixed", "--unit", "images", "--tier", "0:0.50")
    refused = generate(gw, token, model="dall-e-2", n=3)  # 3 x 0.50 held: more than the balance
    assert refused.status_code == 402
    answer = generate(gw, token, model="dall-e-2", n=2)
    row = gw.request_row(answer.headers["x-lava-request-id"])
    assert (row["images"], row["fee"]) == (2, "1.00")


def test_provider_cost_of_the_images_asked_for_is_held_for_a_customer_paying_it(gw):
    token = billed_customer(gw, "0.10", "--rate-type", "percentage", "--unit", "images", "--percentage", "0")
    hd = usd(override("openai", "dall-e-3")["per_image"]["hd/1024x1792"])
    assert generate(gw, token, model="dall-e-3", quality="hd", size="1024x1792").status_code == 402  # 0.12 > 0.10
    answer = generate(gw, token, model="dall-e-3")
    row = gw.request_row(answer.headers["x-lava-request-id"])
    standard = usd(override("openai", "dall-e-3")["per_image"]["standard/1024x1024"])
    assert hd > Decimal("0.10") > standard and row["fee"] == format_usd(to_nanos(standard))
