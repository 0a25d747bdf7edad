"""The OpenAI-compatible server, driven by the real `openai` client against servers started in this
process on free 127.0.0.1 ports: every response format, language, hotwords, streaming, 32 concurrent
clients whose results equal `transcribe` on each file alone, and bad input answered with 4xx JSON."""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import uvicorn

from funasr_nano_mlx import load
from funasr_nano_mlx.scheduler import Scheduler
from funasr_nano_mlx.serve import MIN_UPLOAD_BYTES, Limits, Options, Server, split_hotwords, verbose_json
from funasr_nano_mlx.subtitles import to_srt, to_vtt
from funasr_nano_mlx.transcribe import Segment, Transcription, BatchDecoder, transcribe
from tests.helpers import clip, transcribe_module

API_KEY = "test-key"
LIMITS = Limits(max_upload_bytes=1024 * 1024, max_audio_seconds=120.0, request_timeout=120.0, max_queue=64)


class Running:
    """A server in this process: its scheduler's worker loads the model, uvicorn runs in a thread."""

    def __init__(self, model_dir: Path, uploads: Path, limits: Limits = LIMITS, max_batch: int = 8, decode=None):
        uploads.mkdir(parents=True, exist_ok=True)
        self.uploads = uploads
        self.scheduler = Scheduler(
            functools.partial(load, model_dir), max_batch=max_batch, batch_wait=0.05, decode=decode
        )
        app = Server(self.scheduler, "tiny", uploads, limits, API_KEY).app()
        sock = socket.create_server(("127.0.0.1", 0))  # listening now: clients may connect at once
        self.port = sock.getsockname()[1]
        self.uvicorn = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()

    def client(self, key: str = API_KEY, **options) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, max_retries=0, **options)

    def get(self, path: str, key: str = API_KEY) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Bearer {key}"})

    def metrics(self) -> dict:
        return self.get("/metrics").json()

    def assert_serving(self) -> None:
        """Still answering, and no upload left behind."""
        assert self.get("/health").json()["status"] == "ok"
        wait_for(lambda: not any(self.uploads.iterdir()))

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(30)
        self.scheduler.close(30)


def wait_for(condition, timeout: float = 60.0) -> None:
    """Poll a condition the server reaches on its own (a disconnect seen, a request dropped)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def write(path: Path, samples: np.ndarray) -> Path:
    sf.write(str(path), samples, 16000)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, speech) -> dict[str, Path]:
    """Eight clips of 0.5-7 s, each from another point of the speech, and a 31 s one (several segments)."""
    folder = tmp_path_factory.mktemp("serve-audio")
    lengths = [0.5, 0.9, 1.3, 1.8, 2.4, 3.1, 4.5, 7.0]
    found = {
        f"clip{i}": write(folder / f"clip{i}.wav", np.roll(clip(speech, 8.0), -5000 * i)[: int(s * 16000)])
        for i, s in enumerate(lengths)
    }
    found["long"] = write(folder / "long.wav", clip(speech, 31.0))
    return found


@pytest.fixture(scope="module")
def expected(tiny_model, files) -> dict[str, Transcription]:
    model, tokenizer = tiny_model
    return {name: transcribe(model, tokenizer, path) for name, path in files.items()}


@pytest.fixture(scope="module")
def server(tiny_f32, tmp_path_factory):
    running = Running(tiny_f32, tmp_path_factory.mktemp("uploads"))
    yield running
    running.stop()


def tokens(verbose) -> list[int]:
    return [token for segment in verbose.segments for token in segment.tokens]


# -- what a client asks for ----------------------------------------------------------------------------


def test_every_response_format_equals_transcribe(server, files, expected):
    client, path, want = server.client(), files["clip7"], expected["clip7"]
    create = functools.partial(client.audio.transcriptions.create, model="tiny")
    assert create(file=path).text == want.text
    assert create(file=path, response_format="text") == want.text.strip() + "\n"
    assert create(file=path, response_format="srt") == to_srt(want.segments)
    assert create(file=path, response_format="vtt") == to_vtt(want.segments)
    verbose = create(file=path, response_format="verbose_json", timestamp_granularities=["segment"])
    assert (verbose.text, verbose.duration, verbose.language) == (want.text, want.duration, "auto")
    assert [(s.start, s.end, s.text) for s in verbose.segments] == [(s.start, s.end, s.text) for s in want.segments]
    assert tokens(verbose) == want.token_ids and len(want.token_ids) > 10
    assert client.models.list().data[0].id == "tiny"
    server.assert_serving()


def test_language_and_prompt_reach_the_model(server, tiny_model, files):
    model, tokenizer = tiny_model
    path = files["clip5"]
    asked = server.client().audio.transcriptions.create(
        file=path, model="tiny", language="zh", prompt="Stella, 开放时间；Fun-ASR", response_format="verbose_json"
    )
    want = transcribe(model, tokenizer, path, language="zh", hotwords=["Stella", "开放时间", "Fun-ASR"])
    assert tokens(asked) == want.token_ids and asked.language == "zh"
    # The random tiny model's tokens depend on the prompt: the options are not silently dropped.
    assert want.token_ids != transcribe(model, tokenizer, path).token_ids
    assert want.token_ids != transcribe(model, tokenizer, path, hotwords=["Stella"], language="zh").token_ids


def test_prompt_is_split_into_hotwords():
    assert split_hotwords("Stella, 开放时间；Fun-ASR\nQwen3、 ") == ["Stella", "开放时间", "Fun-ASR", "Qwen3"]
    assert split_hotwords("Stella Smith") == ["Stella Smith"] and split_hotwords(None) == []


def test_stream_sends_segments_in_time_order(server, files, expected):
    want = expected["long"]
    assert len(want.segments) > 1  # the 31 s clip is cut at its pauses
    events = list(server.client().audio.transcriptions.create(file=files["long"], model="tiny", stream=True))
    deltas = [event.delta for event in events if event.type == "transcript.text.delta"]
    assert [event.type for event in events[len(deltas) :]] == ["transcript.text.done"]
    assert "".join(deltas) == events[-1].text == want.text
    assert len(deltas) == sum(1 for segment in want.segments if segment.text)


def test_the_server_has_decoded_before_its_first_request(tiny_f32, tmp_path, files, expected, monkeypatch):
    """What MLX compiles at first use for one row (its kernels, ours at every start, the compiled layers
    and step) is paid before the server listens, by a short warm-up clip that no counter, injected
    decoder or answer sees."""
    module = transcribe_module()
    greedy, decoded, decodes = module.greedy_batch, [], []
    prefill, prompts = module.prefill, []
    monkeypatch.setattr(module, "prefill", lambda llm, rows: prompts.append(rows[0].shape[0]) or prefill(llm, rows))

    def recorded_greedy(llm, embeddings, budgets, *args, **kwargs):
        decodes.append((len(embeddings), list(budgets)))
        return greedy(llm, embeddings, budgets, *args, **kwargs)

    def decode(pipeline, batch, timings):
        decoded.append(len(batch))
        return BatchDecoder.run(pipeline, batch, timings)

    monkeypatch.setattr(module, "greedy_batch", recorded_greedy)
    running = Running(tiny_f32, tmp_path / "uploads", decode=decode)
    try:
        assert decodes == [(1, [4])]  # one row, four steps, before any request
        assert prompts == [prompts[0], 2 * prompts[0]]  # and a prompt twice as long (MLX's quantized matmul)
        metrics = running.metrics()
        assert metrics["warm_up_seconds"] > 0 and metrics["batches"] == 0 and decoded == [], metrics
        answer = running.client().audio.transcriptions.create(
            file=files["clip3"], model="tiny", response_format="verbose_json"
        )
        assert tokens(answer) == expected["clip3"].token_ids
        assert decoded == [1] and len(decodes) == 2
    finally:
        running.stop()


def test_32_concurrent_clients_share_batches(server, files, expected):
    names = [f"clip{i % 8}" for i in range(32)]
    before = server.metrics()

    def ask(name):
        return server.client().audio.transcriptions.create(
            file=files[name], model="tiny", response_format="verbose_json"
        )

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, names))
    assert [tokens(answer) for answer in answers] == [expected[name].token_ids for name in names]
    assert [answer.text for answer in answers] == [expected[name].text for name in names]
    after = server.metrics()
    assert after["requests_done"] - before["requests_done"] == 32
    assert after["max_batch_size"] > 1, after["batch_sizes"]  # the requests were decoded together
    server.assert_serving()


# -- bad input: a 4xx JSON error each, and the server goes on ---------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, files) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad-audio")
    (folder / "notes.wav").write_text("this is not audio\n")
    (folder / "empty.wav").write_bytes(b"")
    flac = folder / "whole.flac"
    sf.write(str(flac), sf.read(str(files["clip7"]))[0], 16000)
    (folder / "truncated.flac").write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    (folder / "header.wav").write_bytes(files["clip7"].read_bytes()[:30])  # cut inside the WAV header
    write(folder / "blip.wav", np.zeros(160, np.float32))  # 10 ms: less than one 25 ms frame
    (folder / "big.wav").write_bytes(np.random.default_rng(0).bytes(2 * LIMITS.max_upload_bytes))
    # Longer than the limit in a small upload (silence compresses): refused from its header.
    sf.write(str(folder / "long.flac"), np.zeros(int((LIMITS.max_audio_seconds + 5) * 16000), np.float32), 16000)
    return {path.stem: path for path in folder.iterdir()}


@pytest.mark.parametrize(
    ("case", "options", "status", "param"),
    [
        ("notes", {}, 400, "file"),
        ("empty", {}, 400, "file"),
        ("truncated", {}, 400, "file"),
        ("header", {}, 400, "file"),
        ("blip", {}, 400, "file"),
        ("big", {}, 413, "file"),
        ("long", {}, 400, "file"),
        ("clip0", {"response_format": "docx"}, 400, "response_format"),
        ("clip0", {"language": "xx"}, 400, "language"),
        ("clip0", {"temperature": 0.4}, 400, "temperature"),
        ("clip0", {"response_format": "srt", "stream": True}, 400, "stream"),
        ("clip0", {"timestamp_granularities": ["word"]}, 400, "timestamp_granularities"),
    ],
)
def test_bad_request_is_a_json_error(server, files, bad_files, case, options, status, param):
    path = bad_files.get(case) or files[case]
    with pytest.raises(openai.APIStatusError) as caught:
        server.client().audio.transcriptions.create(file=path, model="tiny", **options)
    error = caught.value
    assert error.status_code == status and error.body["param"] == param, error.body
    assert error.body["type"] == "invalid_request_error" and error.body["message"]
    assert case != "long" or error.body["code"] == "audio_too_long", error.body
    server.assert_serving()


def test_missing_file_field_and_wrong_content_type(server):
    url = f"http://127.0.0.1:{server.port}/v1/audio/transcriptions"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    no_file = httpx.post(url, headers=headers, data={"model": "tiny"}, files={"other": ("a.txt", b"x")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    as_json = httpx.post(url, headers=headers, json={"model": "tiny", "file": "a.wav"})
    assert as_json.status_code == 415 and as_json.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"http://127.0.0.1:{server.port}/v2/nothing", headers=headers).status_code == 404
    server.assert_serving()


def test_api_key_is_required(server, files):
    wrong = server.client(key="wrong-key")
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.audio.transcriptions.create(file=files["clip0"], model="tiny")
    assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    # The openai client refuses to send no key at all: plain HTTP without an Authorization header.
    url = f"http://127.0.0.1:{server.port}"
    missing = httpx.post(
        f"{url}/v1/audio/transcriptions", data={"model": "tiny"}, files={"file": ("a.wav", files["clip0"].read_bytes())}
    )
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/health").status_code == 401
    server.assert_serving()


def multipart_part(name: str, content: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--cut\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"


@pytest.mark.parametrize("cut", ["in the file", "in a field", "before the closing boundary"])
def test_an_incomplete_upload_is_400(server, files, cut):
    """A body whose Content-Length matches what is sent, but which ends before multipart's closing
    boundary (a client or proxy that cut it short), is said to be incomplete, not missing a field."""
    file_part = multipart_part("file", files["clip0"].read_bytes(), "a.wav")
    model_part = multipart_part("model", b"tiny")
    body = {
        "in the file": (file_part + model_part)[: len(file_part) // 2],
        "in a field": file_part + model_part[:-8],
        "before the closing boundary": model_part + file_part,
    }[cut]
    answer = httpx.post(
        f"http://127.0.0.1:{server.port}/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "multipart/form-data; boundary=cut"},
        content=body,
    )
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "incomplete_upload", answer.text
    assert answer.json()["error"]["message"].startswith("the upload is incomplete")
    whole = httpx.post(
        f"http://127.0.0.1:{server.port}/v1/audio/transcriptions",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "multipart/form-data; boundary=cut"},
        content=model_part + file_part + b"--cut--\r\n",
    )
    assert whole.status_code == 200, whole.text
    server.assert_serving()


def test_a_body_shorter_than_its_content_length_is_incomplete(files, tmp_path):
    """Where the ASGI server ends a body before its Content-Length (uvicorn instead reports the client
    gone: see test_client_that_disconnects_mid_upload), the answer says how much arrived."""
    import asyncio

    from starlette.requests import Request

    from funasr_nano_mlx.serve import ApiError, read_form

    body = multipart_part("model", b"tiny") + multipart_part("file", files["clip0"].read_bytes(), "a.wav")[:5000]

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-type", b"multipart/form-data; boundary=cut"), (b"content-length", b"200000")]
    request = Request({"type": "http", "method": "POST", "headers": headers}, receive)
    with pytest.raises(ApiError) as caught:
        asyncio.run(read_form(request, tmp_path, LIMITS))
    assert caught.value.status == 400 and caught.value.code == "incomplete_upload"
    assert caught.value.message.endswith(f"({len(body)} of the 200000 bytes its Content-Length declares arrived)")


def test_a_rate_too_low_for_speech_is_answered_and_logged(server, files, tmp_path, caplog):
    """Transcribed as `transcribe` does; the CLI's warning has no place in OpenAI's json or verbose_json,
    so the server's log carries it, naming the client's file."""
    path = tmp_path / "low.wav"
    sf.write(str(path), np.random.default_rng(0).uniform(-0.5, 0.5, 8).astype(np.float32), 1, subtype="PCM_16")
    with caplog.at_level(logging.WARNING, logger="funasr_nano_mlx.serve"):
        answer = server.client().audio.transcriptions.create(file=path, model="tiny", response_format="verbose_json")
    assert answer.duration == pytest.approx(8.0, abs=0.01)
    logged = [record.getMessage() for record in caplog.records if record.name == "funasr_nano_mlx.serve"]
    assert logged == ["low.wav is sampled at 1 Hz: speech needs at least 8 kHz, expect a poor transcript"], logged
    server.assert_serving()


def partial_upload(port: int) -> socket.socket:
    """A client that sends the headers and the first bytes of an upload, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: multipart/form-data; boundary=cut\r\n"
        "Content-Length: 200000\r\n\r\n"
        '--cut\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    )
    sock.sendall(head.encode() + b"RIFF" + bytes(4000))
    return sock


def test_client_that_disconnects_mid_upload(server, files, expected):
    before = server.metrics()["uploads_aborted"]
    sock = partial_upload(server.port)
    wait_for(lambda: any(server.uploads.iterdir()))  # the server is writing the upload
    sock.close()
    wait_for(lambda: server.metrics()["uploads_aborted"] == before + 1)
    server.assert_serving()
    assert server.client().audio.transcriptions.create(file=files["clip1"], model="tiny").text == expected["clip1"].text


# -- limits and failures, each on a server of its own ------------------------------------------------------


def test_full_queue_is_429(tiny_f32, tmp_path, files, expected):
    running = Running(tiny_f32, tmp_path / "uploads", Limits(1024 * 1024, 60.0, 60.0, max_queue=1))
    try:
        sock = partial_upload(running.port)  # holds the only place
        wait_for(lambda: running.metrics()["in_flight"] == 1)
        with pytest.raises(openai.RateLimitError) as caught:
            running.client().audio.transcriptions.create(file=files["clip0"], model="tiny")
        assert caught.value.status_code == 429 and caught.value.body["code"] == "queue_full"
        sock.close()
        wait_for(lambda: running.metrics()["in_flight"] == 0)
        answer = running.client().audio.transcriptions.create(file=files["clip0"], model="tiny")
        assert answer.text == expected["clip0"].text
        running.assert_serving()
    finally:
        running.stop()


@pytest.fixture(scope="module")
def recording_file(tmp_path_factory) -> Path:
    """A minute of sentences and pauses: many segments, several seconds of work for the tiny model."""
    from tests.speech import recording

    folder = tmp_path_factory.mktemp("recording")
    return write(folder / "minute.wav", recording(60.0, folder)[0])


def test_client_that_leaves_frees_its_work(tiny_f32, tmp_path, recording_file, files, expected):
    limits = Limits(LIMITS.max_upload_bytes * 4, 120.0, 120.0, max_queue=8)  # the minute is 1.9 MB
    running = Running(tiny_f32, tmp_path / "uploads", limits, max_batch=1)  # one segment per step: many steps
    try:
        with pytest.raises(openai.APITimeoutError):
            running.client(timeout=1.0).audio.transcriptions.create(file=recording_file, model="tiny")
        wait_for(lambda: running.metrics()["requests_cancelled"] == 1)
        metrics = running.metrics()
        assert metrics["segments_dropped"] > 0 and metrics["requests_done"] == 0, metrics
        assert metrics["client_gone"] == 1 and metrics["in_flight"] == 0
        answer = running.client().audio.transcriptions.create(file=files["clip2"], model="tiny")
        assert answer.text == expected["clip2"].text
        running.assert_serving()
    finally:
        running.stop()


def test_request_timeout_is_504(tiny_f32, tmp_path, recording_file):
    limits = Limits(LIMITS.max_upload_bytes * 4, 120.0, request_timeout=1.0, max_queue=8)
    running = Running(tiny_f32, tmp_path / "uploads", limits, max_batch=1)
    try:
        with pytest.raises(openai.APIStatusError) as caught:
            running.client().audio.transcriptions.create(file=recording_file, model="tiny")
        assert caught.value.status_code == 504 and caught.value.body["code"] == "timeout"
        wait_for(lambda: running.metrics()["requests_cancelled"] == 1)
        assert running.metrics()["segments_dropped"] > 0
        running.assert_serving()
    finally:
        running.stop()


def test_a_decoding_error_fails_only_its_request(tiny_f32, tmp_path, files, expected):
    def decode(pipeline, jobs, timings):  # one request's audio breaks the decoder
        if any(job.name == "poison.wav" for job in jobs):
            raise RuntimeError("this segment cannot be decoded")
        return BatchDecoder.run(pipeline, jobs, timings)

    poison = tmp_path / "poison.wav"
    poison.write_bytes(files["clip3"].read_bytes())
    running = Running(tiny_f32, tmp_path / "uploads", decode=decode)
    try:

        def ask(path):
            try:
                return running.client().audio.transcriptions.create(file=path, model="tiny").text
            except openai.InternalServerError as err:
                return err.body

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, [files["clip3"], poison, files["clip4"], files["clip5"]]))
        assert answers[0] == expected["clip3"].text
        assert answers[1]["type"] == "server_error" and "cannot be decoded" in answers[1]["message"]
        assert answers[2:] == [expected["clip4"].text, expected["clip5"].text]
        assert running.metrics()["requests_failed"] == 1
        running.assert_serving()
    finally:
        running.stop()


# -- output details and the command ------------------------------------------------------------------------


def test_verbose_json_has_words_when_the_transcription_has_timestamps():
    segment = Segment(0.0, 1.2, "你好", [1, 2], False, False)
    result = Transcription("a.wav", "你好", [1, 2], False, duration=1.2, segments=[segment])
    options = Options("verbose_json", None, (), False, True)
    assert "words" not in verbose_json(result, options)  # no model has timestamps yet: none invented
    result.timestamps = [{"token": "你", "start": 0.12, "end": 0.3}, {"token": "好", "start": 0.3, "end": 0.54}]
    assert verbose_json(result, options)["words"] == [
        {"word": "你", "start": 0.12, "end": 0.3},
        {"word": "好", "start": 0.3, "end": 0.54},
    ]
    assert "words" not in verbose_json(result, Options("verbose_json", None, (), False, False))  # not asked


def test_serve_command(tiny_f32, tmp_path, files, expected):
    """The CLI end to end: key from the environment, any free port, a clean stop on SIGTERM (as on Ctrl-C)."""
    env = {**os.environ, "FUNASR_NANO_MLX_API_KEY": "env-key", "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "funasr_nano_mlx", "serve", str(tiny_f32), "--port", "0", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().split(" on ")[-1].strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1"), url
        client = openai.OpenAI(base_url=url, api_key="env-key", max_retries=0)
        assert client.audio.transcriptions.create(file=files["clip0"], model="x").text == expected["clip0"].text
        assert len(list(tmp_path.glob("funasr-nano-mlx-uploads-*"))) == 1  # where uploads go while it runs
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="other", max_retries=0).models.list()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert list(tmp_path.glob("funasr-nano-mlx-uploads-*")) == []  # the uploads folder is gone


def test_serve_command_user_errors(tmp_path):
    """One line and exit status 2, before anything is served (in this process: click's runner)."""
    from click.testing import CliRunner

    from funasr_nano_mlx.cli import main

    not_a_model = CliRunner().invoke(main, ["serve", str(tmp_path), "--port", "0"])
    assert not_a_model.exit_code == 2 and "is not a converted Fun-ASR-Nano model" in not_a_model.output
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        in_use = CliRunner().invoke(main, ["serve", str(tmp_path), "--port", str(port)])
    assert in_use.exit_code == 2 and in_use.output.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert len(in_use.output.splitlines()) == 1
    # 1e-9 MB rounds to 0 bytes: every upload would be 413. The least is a second of 16 kHz 16-bit WAV.
    for tiny in ("1e-9", "0.03"):
        no_upload = CliRunner().invoke(main, ["serve", str(tmp_path), "--max-upload-mb", tiny])
        assert no_upload.exit_code == 2 and len(no_upload.output.splitlines()) == 1, no_upload.output
        assert no_upload.output.startswith("error: the upload limit is ")
        assert "--max-upload-mb 0.031" in no_upload.output
    assert Limits(MIN_UPLOAD_BYTES).max_upload_bytes == 32044


def test_cli_imports_the_server_stack_only_to_serve():
    """`funasr-nano-mlx --help` and the other commands do not load Starlette or uvicorn."""
    import ast

    import funasr_nano_mlx.cli as cli

    tree = ast.parse(Path(cli.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top_level for alias in node.names]
    names += [node.module or "" for node in top_level if isinstance(node, ast.ImportFrom)]
    assert not [name for name in names if name.split(".")[0] in ("serve", "starlette", "uvicorn")], names


def test_a_short_request_is_not_kept_behind_a_long_one(tiny_f32, recording_file, files, expected):
    """Round-robin batches: a request that arrives while a long file decodes joins the next batch."""
    from funasr_nano_mlx.audio import load_audio
    from funasr_nano_mlx.scheduler import Work

    short_submitted, both_done, batches, finished = threading.Event(), threading.Event(), [], []

    def decode(pipeline, jobs, timings):
        assert short_submitted.wait(60)  # the first batch may hold only the long file's segments
        batches.append([job.name for job in jobs])
        return BatchDecoder.run(pipeline, jobs, timings)

    def notify(name):
        def record(kind, payload):
            if kind != "segment":
                finished.append((name, kind, payload))
                if len(finished) == 2:
                    both_done.set()

        return record

    scheduler = Scheduler(functools.partial(load, tiny_f32), max_batch=2, decode=decode)
    try:
        prompt = dict(language=None, hotwords=[], itn=True)
        scheduler.submit(Work("long", load_audio(recording_file), prompt, notify("long")))
        scheduler.submit(Work("short", load_audio(files["clip1"]), prompt, notify("short")))
        short_submitted.set()
        assert both_done.wait(300)
    finally:
        scheduler.close(300)
    assert [(name, kind) for name, kind, _ in finished] == [("short", "done"), ("long", "done")]
    assert finished[0][2].token_ids == expected["clip1"].token_ids
    first_short = next(i for i, names in enumerate(batches) if "short" in names)
    assert first_short <= 1 and len(batches) > 3, batches  # in the first or second of many batches
