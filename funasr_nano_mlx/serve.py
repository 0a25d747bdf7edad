"""`funasr-nano-mlx serve`: an OpenAI-compatible transcription server whose requests share batches.

The HTTP side (Starlette on uvicorn) reads uploads, checks them and renders results; all model work
happens on the scheduler's one worker thread (scheduler.py), which decodes the segments of every
request in flight together. The endpoints follow OpenAI's audio API (POST /v1/audio/transcriptions,
GET /v1/models) and its error shape, {"error": {"message", "type", "param", "code"}}, so the
`openai` client and the tools built on it work unchanged.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import math
import re
import signal
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.routing import Route

from .audio import AUDIO_EXTENSIONS, SAMPLE_RATE, check_duration, header_seconds
from .audio import read_audio as read_file
from .decoding import hotword_list
from .errors import UserError
from .languages import resolve_language
from .scheduler import Scheduler, Work
from .subtitles import timed_cues, to_srt, to_vtt
from .transcribe import Transcription

log = logging.getLogger("funasr_nano_mlx.serve")

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
STREAM_FORMATS = ("json", "text")  # as OpenAI: a stream carries text, not subtitles or segments
MAX_FIELD_BYTES = 64 * 1024  # a form field other than the file (the prompt is the longest)
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart framing and the other fields, on top of the file
# A prompt is a list of hotwords separated by commas, semicolons or newlines, ASCII or full-width
# (and the ideographic enumeration comma): "Stella, 开放时间；Fun-ASR" -> Stella / 开放时间 / Fun-ASR.
HOTWORD_SEPARATORS = re.compile(r"[,;\n，；、]")
# The least upload limit: one second of audio as the model hears it, in the plainest file that holds it
# (16 kHz 16-bit mono WAV: a 44-byte header and 32000 bytes). A guard against a slip of units (the option
# is in MB: 1e-9 was 0 bytes, a 413 for every upload), not a policy: compressed audio is smaller.
MIN_UPLOAD_BYTES = 44 + 2 * SAMPLE_RATE


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 25 * 1024 * 1024  # OpenAI's limit for this endpoint
    max_audio_seconds: float = 1800.0  # 16 kHz float32: 115 MB of samples at the limit
    request_timeout: float = 600.0  # seconds from the first byte of the request to the last of the answer
    max_queue: int = 64  # requests in the server at once (uploading, waiting or decoding); 429 beyond

    def __post_init__(self):
        if self.max_upload_bytes < MIN_UPLOAD_BYTES:  # refused at startup, not with a 413 for every upload
            raise UserError(
                f"the upload limit is {self.max_upload_bytes} bytes; it must be at least {MIN_UPLOAD_BYTES} bytes "
                f"(--max-upload-mb {math.ceil(MIN_UPLOAD_BYTES / 2**20 * 1000) / 1000}), one second of 16 kHz 16-bit mono WAV"
            )


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 429 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


# -- reading the upload ---------------------------------------------------------------------------------


@dataclass
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    file: Path | None = None  # where the `file` part was written
    filename: str = "audio"
    file_bytes: int = 0
    file_complete: bool = False

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name) or self.fields.get(name + "[]")
        return values[-1] if values else default

    def get_all(self, name: str) -> list[str]:
        return self.fields.get(name, []) + self.fields.get(name + "[]", [])


class _FormReader:
    """python-multipart callbacks: the `file` part goes to a file in `folder`, other fields to memory.

    Starlette's own parser spools files to the system temporary directory; this one writes only
    where the server said, and stops at the size limit while the upload streams in.
    """

    def __init__(self, folder: Path, limits: Limits):
        self.form, self.folder, self.limits = Form(), folder, limits
        self.ended = False  # the closing boundary was read: the body is whole
        self._headers: dict[bytes, bytes] = {}
        self._name = self._value = b""
        self._part: str | None = None
        self._data = bytearray()
        self._out = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _end(self):
        self.ended = True

    def _begin(self):
        self._headers, self._data, self._part = {}, bytearray(), None

    def _header_field(self, data, start, end):
        self._name += data[start:end]

    def _header_value(self, data, start, end):
        self._value += data[start:end]

    def _header_end(self):
        self._headers[self._name.lower()] = self._value
        self._name = self._value = b""

    def _headers_finished(self):
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise ApiError(400, "a multipart part has no name in its Content-Disposition header")
        self._part = options[b"name"].decode("utf-8", "replace")
        if self._part == "file":
            if self._out is not None:
                raise ApiError(400, "send one file per request", param="file")
            self.form.filename = options.get(b"filename", b"audio").decode("utf-8", "replace") or "audio"
            suffix = Path(self.form.filename).suffix.lower()
            # The name on disk is ours; only a known audio suffix is kept (libsndfile may use it).
            self.form.file = self.folder / ("upload" + (suffix if suffix in AUDIO_EXTENSIONS else ""))
            self._out = open(self.form.file, "wb")

    def _part_data(self, data, start, end):
        if self._part == "file":
            self.form.file_bytes += end - start
            if self.form.file_bytes > self.limits.max_upload_bytes:
                raise _too_large(self.limits)
            # A plain write: local, at most one network chunk, so the event loop waits microseconds.
            self._out.write(data[start:end])
        else:
            self._data += data[start:end]
            if len(self._data) > MAX_FIELD_BYTES:
                raise ApiError(
                    400, f"form field {self._part!r} is longer than {MAX_FIELD_BYTES} bytes", param=self._part
                )

    def _part_end(self):
        if self._part == "file":
            self._out.close()
            self.form.file_complete = True
        elif self._part is not None:
            self.form.fields.setdefault(self._part, []).append(self._data.decode("utf-8", "replace"))

    def close(self):
        if self._out is not None:
            self._out.close()


def _too_large(limits: Limits) -> ApiError:
    return ApiError(
        413,
        f"the file is larger than the server's limit of {limits.max_upload_bytes} bytes",
        param="file",
        code="file_too_large",
    )


async def read_form(request: Request, folder: Path, limits: Limits) -> Form:
    """The multipart form of a transcription request, its file written into `folder`."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise ApiError(
            415, "send the audio as multipart/form-data (fields: file, model, ...)", code="unsupported_media_type"
        )
    if b"boundary" not in params:
        raise ApiError(400, "the multipart/form-data Content-Type has no boundary")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_upload_bytes + FORM_OVERHEAD_BYTES:
        raise _too_large(limits)  # refused before a byte of it is read
    reader = _FormReader(folder, limits)
    parser = MultipartParser(params[b"boundary"], reader.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limits.max_upload_bytes + FORM_OVERHEAD_BYTES:
                raise _too_large(limits)
            parser.write(chunk)
        parser.finalize()
    except FormParserError as err:
        raise ApiError(400, f"malformed multipart/form-data body: {err}") from None
    finally:
        reader.close()
    if not reader.ended:  # else the fields cut off would be reported as missing
        raise _incomplete(received, declared)
    return reader.form


def _incomplete(received: int, declared: str) -> ApiError:
    """A body that ends before multipart's closing boundary. python-multipart's finalize does not check
    it (python_multipart/multipart.py:1621 in 0.0.34, MultipartParser.finalize: "TODO: verify that we're
    in the state MultipartState.END"); its "end" callback, on the closing boundary, says a body is whole."""
    message = "the upload is incomplete: the multipart/form-data body ends before its closing boundary"
    if declared.isdigit() and received < int(declared):
        message += f" ({received} of the {declared} bytes its Content-Length declares arrived)"
    return ApiError(400, message, code="incomplete_upload")


def read_audio(form: Form, limits: Limits) -> np.ndarray:
    """The upload's samples (16 kHz mono), read as `transcribe` reads a file; 400 for anything else."""
    if not form.file_complete:
        raise ApiError(400, "the 'file' part of the multipart body is incomplete", param="file")
    if form.file_bytes == 0:
        raise ApiError(400, f"the uploaded file {form.filename!r} is empty", param="file", code="empty_file")
    declared = header_seconds(form.file)  # before decoding: a small compressed file can hold hours
    if declared is not None and declared > limits.max_audio_seconds:
        raise _too_long(declared, limits)
    try:
        audio = read_file(form.file)
        check_duration(audio.samples, repr(form.filename))
        if audio.cut_short:  # OpenAI's responses have no place for a warning, so a cut-off upload is refused
            raise UserError(audio.cut_short)
    except UserError as err:  # name the client's file, not our temporary path
        message = str(err).replace(str(form.file), form.filename)
        raise ApiError(400, message, param="file", code="invalid_audio") from None
    seconds = len(audio.samples) / SAMPLE_RATE
    if seconds > limits.max_audio_seconds:
        raise _too_long(seconds, limits)
    # The rest (a rate too low for speech) is transcribed as `transcribe` does; neither OpenAI's json nor
    # its verbose_json has a place for a warning, so the operator's log has it instead.
    for warning in audio.warnings:
        log.warning("%s", warning.replace(str(form.file), form.filename))
    return audio.samples


def _too_long(seconds: float, limits: Limits) -> ApiError:
    return ApiError(
        400,
        f"the audio is {seconds:.1f} s long; this server takes at most {limits.max_audio_seconds:g} s",
        param="file",
        code="audio_too_long",
    )


# -- the request's options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    response_format: str
    language: str | None
    hotwords: tuple[str, ...]
    stream: bool
    words: bool  # timestamp_granularities asked for "word"


def split_hotwords(prompt: str | None) -> list[str]:
    """OpenAI's `prompt` taken as hotwords: split at commas, semicolons and newlines, blanks dropped."""
    return [word.strip() for word in HOTWORD_SEPARATORS.split(prompt or "") if word.strip()]


def _flag(form: Form, name: str) -> bool:
    value = (form.get(name) or "false").strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiError(400, f"{name} must be true or false, got {value!r}", param=name)
    return value in ("true", "1")


def parse_options(form: Form) -> Options:
    if form.get("model") is None:
        raise ApiError(
            400, "the request has no 'model' field (any name is accepted: this server has one model)", param="model"
        )
    response_format = form.get("response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(
            400,
            f"unknown response_format {response_format!r}; use one of {', '.join(RESPONSE_FORMATS)}",
            param="response_format",
        )
    try:
        temperature = float(form.get("temperature") or 0)
    except ValueError:
        raise ApiError(400, "temperature must be a number", param="temperature") from None
    if temperature != 0:
        raise ApiError(400, "only greedy decoding is supported: temperature must be 0", param="temperature")
    language = form.get("language") or None
    try:
        resolve_language(language)
    except UserError as err:
        raise ApiError(400, str(err), param="language", code="unsupported_language") from None
    stream = _flag(form, "stream")
    if stream and response_format not in STREAM_FORMATS:
        raise ApiError(
            400, f"stream=true works with response_format json or text, not {response_format}", param="stream"
        )
    granularities = form.get_all("timestamp_granularities")
    if set(granularities) - {"word", "segment"}:
        raise ApiError(400, "timestamp_granularities takes word and/or segment", param="timestamp_granularities")
    if granularities and response_format != "verbose_json":
        raise ApiError(
            400, "timestamp_granularities needs response_format verbose_json", param="timestamp_granularities"
        )
    # OpenAI's `keywords[]` are hotwords as they are; `prompt` is split into them.
    try:
        hotwords = hotword_list([*form.get_all("keywords"), *split_hotwords(form.get("prompt"))])
    except UserError as err:  # too long for a prompt
        raise ApiError(400, str(err), param="prompt") from None
    return Options(response_format, language, tuple(hotwords), stream, "word" in granularities)


# -- rendering ------------------------------------------------------------------------------------------


def _timed(item, *names: str):
    """A field of a timestamp entry, which may be a dict or an object."""
    for name in names:
        value = item.get(name) if isinstance(item, dict) else getattr(item, name, None)
        if value is not None:
            return value
    return None


def word_timestamps(result: Transcription) -> list[dict] | None:
    """OpenAI's `words` ({word, start, end}) from the transcription's timestamps, where it has them.

    Today no converted model carries them; a model with upstream's CTC head gives per-token (or
    per-word) times on the Transcription as `words` or `timestamps`, and they appear here as they are.
    """
    entries = getattr(result, "words", None) or getattr(result, "timestamps", None)
    if not entries:
        return None
    return [
        {
            "word": _timed(entry, "word", "text", "token"),
            "start": float(_timed(entry, "start")),
            "end": float(_timed(entry, "end")),
        }
        for entry in entries
    ]


def verbose_json(result: Transcription, options: Options) -> dict:
    """OpenAI's verbose_json, with what this model knows (no log-probabilities or no-speech scores)."""
    body = {
        "task": "transcribe",
        "language": options.language or "auto",  # as asked: the model does not report what it heard
        "duration": result.duration,
        "text": result.text,
        "segments": [
            {
                "id": index,
                "seek": round(segment.start * 100),  # Whisper's seek: 10 ms frames into the audio
                "start": segment.start,
                "end": segment.end,
                "text": segment.text,
                "tokens": segment.token_ids,
                "temperature": 0.0,
                "hit_token_limit": segment.hit_token_limit,
                "repetition": segment.repetition,
            }
            for index, segment in enumerate(result.segments)
        ],
    }
    words = word_timestamps(result) if options.words else None  # as OpenAI: words only when asked for
    if words is not None:
        body["words"] = words
    return body


def render(result: Transcription, options: Options) -> Response:
    fmt = options.response_format
    if fmt == "json":
        return JSONResponse({"text": result.text})
    if fmt == "verbose_json":
        return JSONResponse(verbose_json(result, options))
    # OpenAI answers the text formats as text/plain.
    # Subtitles follow the words where the model gives timestamps (CTC head), else one cue per segment.
    text = {
        "text": lambda: result.text.strip() + "\n",
        "srt": lambda: to_srt(timed_cues(result)),
        "vtt": lambda: to_vtt(timed_cues(result)),
    }[fmt]()
    return PlainTextResponse(text)


def sse(event: dict) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


# -- waiting for the scheduler --------------------------------------------------------------------------


class Pending:
    """A submitted request, seen from the event loop: the worker's notifications arrive in a queue."""

    def __init__(self, scheduler: Scheduler, name: str, samples: np.ndarray, options: Options):
        loop, self.events = asyncio.get_running_loop(), asyncio.Queue()
        prompt = dict(language=options.language, hotwords=list(options.hotwords), itn=True)

        def notify(kind, payload):
            loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))

        self.scheduler, self.work = scheduler, Work(name, samples, prompt, notify)
        try:
            scheduler.submit(self.work)
        except RuntimeError:
            raise ApiError(503, "the server is shutting down", kind="server_error") from None

    async def next(self, deadline: float) -> tuple[str, object]:
        """The next notification; an ApiError when it fails or the deadline passes."""
        try:
            kind, payload = await asyncio.wait_for(self.events.get(), deadline - asyncio.get_running_loop().time())
        except asyncio.TimeoutError:
            raise ApiError(
                504, "the request took longer than the server's timeout", code="timeout", kind="timeout_error"
            ) from None
        if kind == "error":
            if isinstance(payload, UserError):
                raise ApiError(400, str(payload), param="file")
            raise ApiError(500, f"decoding failed: {payload}", kind="server_error")
        return kind, payload

    def cancel(self) -> None:
        if not self.work.finished:
            self.scheduler.cancel(self.work)


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (after the body was read, uvicorn's receive waits for that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def result_of(pending: Pending, request: Request, deadline: float) -> Transcription | None:
    """The transcription, or None if the client left first (its remaining segments are dropped)."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        while True:
            step = asyncio.ensure_future(pending.next(deadline))
            await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                return None
            kind, payload = step.result()
            if kind == "done":
                return payload
    finally:
        gone.cancel()
        pending.cancel()


async def stream_events(pending: Pending, deadline: float, release):
    """OpenAI's transcription stream: a delta per segment, in time order, then the whole text.

    The deltas concatenate to the final text (segments are joined by one space, as `transcribe` does).
    Starlette cancels this generator when the client disconnects; `finally` then drops the request.
    """
    texts: dict[int, str] = {}
    sent = 0
    try:
        while True:
            try:
                kind, payload = await pending.next(deadline)
            except ApiError as err:
                yield sse(err.body())  # the openai client raises it as an APIError
                return
            if kind == "segment":
                index, segment = payload
                texts[index] = segment.text
                while sent in texts:
                    delta = (" " if sent else "") + texts.pop(sent)
                    sent += 1
                    if delta:
                        yield sse({"type": "transcript.text.delta", "delta": delta})
            elif kind == "done":
                yield sse({"type": "transcript.text.done", "text": payload.text})
                return
    finally:
        pending.cancel()
        release()


# -- the application ------------------------------------------------------------------------------------


class Server:
    """The endpoints, over one scheduler. `uploads` is a folder of the server's own (see `serve`)."""

    def __init__(
        self, scheduler: Scheduler, model_id: str, uploads: Path, limits: Limits = Limits(), api_key: str | None = None
    ):
        self.scheduler, self.model_id, self.uploads, self.limits = scheduler, model_id, Path(uploads), limits
        self.api_key = api_key.encode() if api_key else None
        self.in_flight = 0
        self.counts = {"requests": 0, "rejected_queue_full": 0, "uploads_aborted": 0, "client_gone": 0}

    def app(self) -> Starlette:
        routes = [
            Route("/v1/audio/transcriptions", self.transcriptions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.model, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]
        handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _server_error}
        return _KeyCheck(Starlette(routes=routes, exception_handlers=handlers), self.api_key)

    async def transcriptions(self, request: Request) -> Response:
        release = self._admit()
        streaming = False
        try:
            deadline = asyncio.get_running_loop().time() + self.limits.request_timeout
            try:
                form, options, samples = await asyncio.wait_for(self._receive(request), self.limits.request_timeout)
            except asyncio.TimeoutError:
                raise ApiError(408, "the upload took longer than the server's timeout", code="timeout") from None
            except ClientDisconnect:
                self.counts["uploads_aborted"] += 1
                return Response(status_code=400)  # nobody is there to read it
            pending = Pending(self.scheduler, form.filename, samples, options)
            if options.stream:
                streaming = True

                def finish():  # idempotent: the stream's own `finally` does the same
                    pending.cancel()
                    release()

                return StreamingResponse(
                    stream_events(pending, deadline, release),
                    media_type="text/event-stream",
                    headers={"Cache-Control": "no-cache"},
                    background=BackgroundTask(finish),
                )
            result = await result_of(pending, request, deadline)
            if result is None:
                self.counts["client_gone"] += 1
                return Response(status_code=400)  # nobody is there to read it
            return render(result, options)
        finally:
            if not streaming:
                release()

    def _admit(self):
        """Count the request in, or refuse it (429) when the server holds max_queue already."""
        if self.in_flight >= self.limits.max_queue:
            self.counts["rejected_queue_full"] += 1
            raise ApiError(
                429,
                f"the server is busy ({self.limits.max_queue} requests in flight); retry later",
                code="queue_full",
                kind="rate_limit_error",
            )
        self.in_flight += 1
        self.counts["requests"] += 1
        released = False

        def release():  # the counter lives on the event loop's thread: no lock is needed
            nonlocal released
            if not released:
                released, self.in_flight = True, self.in_flight - 1

        return release

    async def _receive(self, request: Request) -> tuple[Form, Options, np.ndarray]:
        """Read the form, check the options, decode the audio; the upload's folder is always removed."""
        with tempfile.TemporaryDirectory(dir=self.uploads) as folder:
            form = await read_form(request, Path(folder), self.limits)
            if form.file is None:  # named before any option, as the first thing a request needs
                raise ApiError(400, "the request has no 'file' field: send the audio as a file part", param="file")
            options = parse_options(form)  # a bad option is refused before the audio is decoded
            samples = await asyncio.to_thread(read_audio, form, self.limits)
        return form, options, samples

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        if request.path_params["model_id"] != self.model_id:
            raise ApiError(
                404,
                f"the model {request.path_params['model_id']!r} does not exist; this server has {self.model_id!r}",
                param="model",
                code="model_not_found",
            )
        return JSONResponse(self._model_card())

    def _model_card(self) -> dict:
        return {"id": self.model_id, "object": "model", "created": 0, "owned_by": "funasr-nano-mlx"}

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.model_id})

    async def metrics(self, request: Request) -> Response:
        return JSONResponse({**self.counts, "in_flight": self.in_flight, **self.scheduler.snapshot()})


class _KeyCheck:
    """ASGI middleware: with an API key, every request must carry `Authorization: Bearer KEY` (401 otherwise)."""

    def __init__(self, app, key: bytes | None):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if self.key is None or scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = given.partition(b" ")
        # compare_digest takes as long whatever the token: a wrong key's prefix cannot be found by timing.
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return await self.app(scope, receive, send)
        message = "incorrect API key provided" if given else "no API key: send 'Authorization: Bearer KEY'"
        await ApiError(401, message, code="invalid_api_key").response()(scope, receive, send)


async def _api_error(request: Request, err: ApiError) -> Response:
    return err.response()


async def _http_error(request: Request, err: HTTPException) -> Response:
    return ApiError(err.status_code, err.detail, code="not_found" if err.status_code == 404 else None).response()


async def _server_error(request: Request, err: Exception) -> Response:
    log.exception("request failed", exc_info=err)
    return ApiError(500, "internal server error (see the server's log)", kind="server_error").response()


# -- running it -----------------------------------------------------------------------------------------


def listen(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port))
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def serve(
    model: str,
    *,
    revision: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    vad: str | None = None,
    vad_revision: str | None = None,
    max_batch: int = 16,
    batch_wait: float = 0.1,
    limits: Limits = Limits(),
    log_level: str = "info",
) -> None:
    """Load MODEL (a directory or a hub repo id), listen on host:port and serve until interrupted."""
    from .transcribe import load

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    segmenter = "auto"
    if vad:
        from .vad import find_vad, load_vad

        # Found (downloaded) and its config checked now, before the model loads; loaded on the scheduler's thread.
        segmenter = functools.partial(load_vad, find_vad(vad, vad_revision)[0])
    sock = listen(host, port)  # first: a port in use is reported before the model loads
    try:
        scheduler = Scheduler(
            functools.partial(load, model, revision), segmenter=segmenter, max_batch=max_batch, batch_wait=batch_wait
        )
        try:
            _run(scheduler, sock, model, limits, api_key, log_level)
        finally:
            scheduler.close()
    finally:
        sock.close()


def _run(
    scheduler: Scheduler, sock: socket.socket, model: str, limits: Limits, api_key: str | None, log_level: str
) -> None:
    import uvicorn

    host, port = sock.getsockname()[:2]
    if not api_key and host not in ("127.0.0.1", "::1"):
        log.warning("listening on %s without an API key: anyone who reaches this port can use it", host)
    model_id = Path(model).name if Path(model).is_dir() else model  # a directory's name, or the repo id
    with tempfile.TemporaryDirectory(prefix="funasr-nano-mlx-uploads-") as uploads:
        server = Server(scheduler, model_id, Path(uploads), limits, api_key)
        print(f"serving {model_id} on http://{host}:{port}/v1", flush=True)
        config = uvicorn.Config(server.app(), log_level=log_level, timeout_graceful_shutdown=5)
        # uvicorn stops gracefully on SIGINT and SIGTERM, then raises the signal again; both end up as
        # KeyboardInterrupt here, so the uploads folder is removed and a stop is not an error.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
