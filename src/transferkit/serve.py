"""A small prediction server: FastAPI + uvicorn over a run folder or an exported ONNX file.

``POST /predict`` takes multipart image files (``curl -F file=@cat.jpg``), a raw image body (``content-type:
image/jpeg``), JSON with base64 images (``{"images": ["..."]}``) or JSON texts (``{"texts": ["great film"]}``), and an
optional ``top_k`` (query parameter, form field or JSON field). ``GET /health`` says the server is up and shows the
batching statistics; ``GET /info`` the labels, preprocessing, model, runtime and version.

Concurrent requests are batched dynamically (:mod:`transferkit.batching`) in one worker; the queue is bounded (503
when full), request bodies, inputs per request, image pixels and text lengths are limited (413), unsupported content
types get 415, malformed input 422, slow requests 408/504, a missing API key 401 — always as JSON
``{"detail": "..."}``, and the server keeps answering.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool

from .batching import DynamicBatcher, QueueFull
from .data.images import to_rgb
from .errors import TransferKitError, bad_value
from .options import ServeOptions
from .runtime import Predictor, load_predictor

logger = logging.getLogger(__name__)

API_KEY_ENV = "TRANSFERKIT_API_KEY"
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
JSON_TYPES = ("application/json",)
FORM_TYPES = ("multipart/form-data",)


@dataclass(frozen=True)
class ServeConfig:
    """Batching and limits of the server.

    Attributes:
        max_batch_size: most inputs per model call (1 turns batching off).
        max_wait_ms: how long the first input of a batch waits for more.
        max_queue: most inputs waiting for the model; more get 503.
        max_request_bytes: largest request body; larger get 413.
        max_inputs: most images or texts in one request (413).
        max_image_pixels: largest decoded image (width x height; decompression bombs get 413).
        max_text_chars: longest text (413).
        timeout_s: longest a request may take, reading included (408 while reading, else 504).
        top_k: labels per prediction when the request does not say.
        api_key: when set, ``/predict`` and ``/info`` need ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``.
    """

    max_batch_size: int = ServeOptions.max_batch_size  # defaults: the option schema's (transferkit serve --help)
    max_wait_ms: float = ServeOptions.max_wait_ms
    max_queue: int = ServeOptions.max_queue
    max_request_bytes: int = int(ServeOptions.max_request_mb * 1024 * 1024)
    max_inputs: int = ServeOptions.max_inputs
    max_image_pixels: int = ServeOptions.max_image_pixels
    max_text_chars: int = 100_000
    timeout_s: float = ServeOptions.timeout
    top_k: int = ServeOptions.top_k
    api_key: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_request_bytes", "max_inputs", "max_image_pixels",
                     "max_text_chars", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad_value(name, value, "a positive integer", f"Pass e.g. --{name.replace('_', '-')} 16.")
        if not isinstance(self.max_wait_ms, (int, float)) or self.max_wait_ms < 0:
            raise bad_value("max_wait_ms", self.max_wait_ms, "a number of milliseconds >= 0",
                            "Pass e.g. --max-wait-ms 5.")
        if not isinstance(self.timeout_s, (int, float)) or self.timeout_s <= 0:
            raise bad_value("timeout_s", self.timeout_s, "a positive number of seconds", "Pass e.g. --timeout 30.")

    def public(self) -> dict[str, Any]:
        """The settings without the API key (for ``/info``)."""
        return {k: v for k, v in asdict(self).items() if k != "api_key"} | {"api_key_required": bool(self.api_key)}


class RequestError(Exception):
    """A bad request: answered with ``status`` and a one-line JSON ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def create_app(predictor: Predictor, config: ServeConfig | None = None) -> Any:
    """The FastAPI application serving ``predictor`` (the batcher starts and stops with the app).

    Args:
        predictor: a back end from :func:`transferkit.runtime.load_predictor` (or any object with its methods).
        config: batching and limits.
    """
    from . import __version__

    config = config or ServeConfig()
    batcher = DynamicBatcher(lambda items: list(predictor.probabilities(items)), max_batch_size=config.max_batch_size,
                             max_wait_ms=config.max_wait_ms, max_queue=config.max_queue)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="transferkit", version=__version__, lifespan=lifespan)
    app.add_middleware(_BodyLimit, max_bytes=config.max_request_bytes)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unexpected error while answering a request")
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server is still up"},
                            status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "stats": batcher.stats()}

    @app.get("/info")
    async def info(request: Request) -> dict[str, Any]:
        _check_key(request, config)
        return {"classes": predictor.classes, "modality": predictor.modality, "runtime": predictor.runtime,
                **predictor.describe(), "version": __version__, "serving": config.public(), "stats": batcher.stats()}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        _check_key(request, config)
        try:
            names, items, top_k = await asyncio.wait_for(_read_inputs(request, predictor, config), config.timeout_s)
        except asyncio.TimeoutError as exc:
            raise RequestError(408, f"Reading the request took longer than {config.timeout_s:g} s.") from exc
        prepared = await run_in_threadpool(_prepare_all, predictor, items, config)
        try:
            rows = await asyncio.wait_for(batcher.submit(prepared), config.timeout_s)
        except QueueFull as exc:
            raise RequestError(503, f"Server busy: {exc}. Retry in a moment.") from exc
        except asyncio.TimeoutError as exc:
            raise RequestError(504, f"Prediction took longer than {config.timeout_s:g} s; the server is "
                                    "overloaded. Retry later.") from exc
        return {"predictions": [_prediction(name, row, predictor.classes, top_k)
                                for name, row in zip(names, rows, strict=True)]}

    return app


def serve(source: str | Path, *, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None,
          threads: int | None = None, log_level: str = "info") -> None:
    """Serve a run folder or an exported ``.onnx`` file until interrupted.

    Args:
        source: the run folder (PyTorch) or the ``.onnx`` file with its sidecar (onnxruntime).
        host: the interface to listen on (``0.0.0.0`` for all, e.g. in a container).
        port: the TCP port.
        config: batching and limits; the API key defaults to the ``TRANSFERKIT_API_KEY`` environment variable.
        threads: inference threads (torch and onnxruntime); default: theirs.
        log_level: uvicorn's log level.
    """
    import uvicorn

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise bad_value("port", port, "an integer between 0 and 65535", "Pass e.g. --port 8000.")
    config = with_env_api_key(config or ServeConfig())
    if threads:
        import torch

        torch.set_num_threads(threads)
    predictor = load_predictor(source, threads=threads)
    logger.info("Serving %s (%s, %s, %d classes) on http://%s:%d — batching up to %d inputs, %.1f ms wait%s",
                source, predictor.modality, predictor.runtime, len(predictor.classes), host, port,
                config.max_batch_size, config.max_wait_ms, "; API key required" if config.api_key else "")
    uvicorn.run(create_app(predictor, config), host=host, port=port, log_level=log_level, timeout_keep_alive=5)


def with_env_api_key(config: ServeConfig) -> ServeConfig:
    """``config`` with the API key from ``TRANSFERKIT_API_KEY`` when it sets none itself."""
    key = os.environ.get(API_KEY_ENV)
    return ServeConfig(**{**asdict(config), "api_key": key}) if config.api_key is None and key else config


# --- reading requests ---------------------------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: 413 for a declared ``content-length`` over the limit; a body that streams past it (chunked
    uploads) makes reading it fail with :class:`_BodyTooLarge`, answered 413 too."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            status, detail = (413, f"Request body of {int(declared)} bytes is over the limit of {self.max_bytes} "
                                   "bytes. Send fewer or smaller inputs.") if declared.isdigit() else \
                (400, "Invalid content-length header.")
            await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge()
            return message

        await self.app(scope, limited_receive, send)


def _check_key(request: Any, config: ServeConfig) -> None:
    if not config.api_key:
        return
    given = request.headers.get("x-api-key") or ""
    authorization = request.headers.get("authorization") or ""
    if not given and authorization.lower().startswith("bearer "):
        given = authorization[7:].strip()
    if not hmac.compare_digest(given.encode(), config.api_key.encode()):
        raise RequestError(401, "Missing or wrong API key. Send it as 'X-API-Key: KEY' or 'Authorization: Bearer "
                                "KEY'.")


async def _read_inputs(request: Any, predictor: Predictor, config: ServeConfig) -> tuple[list[str], list[Any], int]:
    """(names, decoded inputs: PIL images or strings, top_k) from a multipart, JSON or raw image request."""
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    top_k: Any = request.query_params.get("top_k")
    try:
        if content_type in FORM_TYPES:
            names, raw, texts, form_top_k = await _read_form(request, config)
            top_k = form_top_k if form_top_k is not None else top_k
        elif content_type in JSON_TYPES:
            names, raw, texts, json_top_k = _read_json(await request.body())
            top_k = json_top_k if json_top_k is not None else top_k
        elif content_type.startswith("image/"):
            names, raw, texts = ["#0"], [await request.body()], []
        else:
            got = content_type or "no content-type"
            raise RequestError(415, f"Unsupported content type {got!r}. Send multipart/form-data (image files), "
                                    "application/json ({\"texts\": [...]} or {\"images\": [base64, ...]}) or an "
                                    "image/* body.")
    except _BodyTooLarge as exc:
        raise RequestError(413, f"Request body is over the limit of {config.max_request_bytes} bytes. Send fewer or "
                                "smaller inputs.") from exc
    inputs = raw if raw else texts
    if not inputs:
        raise RequestError(422, "No inputs: send image files, {\"images\": [...]} or {\"texts\": [...]}.")
    if len(inputs) > config.max_inputs:
        raise RequestError(413, f"{len(inputs)} inputs in one request; at most {config.max_inputs}. Split the "
                                "request.")
    if predictor.modality == "text" and raw:
        raise RequestError(422, "This model classifies texts; send {\"texts\": [\"...\"]} as application/json.")
    if predictor.modality == "image" and texts:
        raise RequestError(422, "This model classifies images; send image files (multipart) or {\"images\": "
                                "[base64, ...]}.")
    return names, inputs, _top_k(top_k, config.top_k)


async def _read_form(request: Any, config: ServeConfig) -> tuple[list[str], list[bytes], list[str], Any]:
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.formparsers import MultiPartException

    try:
        form = await request.form(max_files=config.max_inputs, max_fields=config.max_inputs + 1,
                                  max_part_size=config.max_text_chars * 4)
    except (MultiPartException, HTTPException) as exc:  # Starlette turns its parser's errors into 400s
        message = str(getattr(exc, "message", None) or getattr(exc, "detail", exc))
        too_much = "Too many" in message or "exceeded maximum size" in message
        raise RequestError(413 if too_much else 422, f"{'Too large' if too_much else 'Malformed'} multipart body: "
                                                     f"{message}") from exc
    names, raw, texts, top_k = [], [], [], None
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                names.append(value.filename or f"#{len(names)}")
                raw.append(await value.read())
            elif key == "top_k":
                top_k = value
            elif key in ("text", "texts"):
                texts.append(value)
            else:
                raise RequestError(422, f"Unknown form field {key!r}: send image files, 'text' fields or 'top_k'.")
    finally:
        await form.close()
    if texts and raw:
        raise RequestError(422, "Send either image files or texts in one request, not both.")
    return (names if raw else [f"#{i}" for i in range(len(texts))]), raw, texts, top_k


def _read_json(body: bytes) -> tuple[list[str], list[bytes], list[str], Any]:
    from pydantic import BaseModel, ConfigDict, ValidationError

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        texts: list[str] | None = None
        images: list[str] | None = None
        top_k: int | None = None

    try:
        request = PredictRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise RequestError(422, f"Malformed JSON request ({where}: {first.get('msg')}). Send {{\"texts\": "
                                "[\"...\"]} or {\"images\": [\"<base64>\", ...]}, optionally \"top_k\".") from exc
    if request.texts is not None and request.images is not None:
        raise RequestError(422, "Send either \"texts\" or \"images\" in one request, not both.")
    raw = []
    for i, encoded in enumerate(request.images or []):
        data = encoded.split(",", 1)[1] if encoded.startswith("data:") else encoded
        try:
            raw.append(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise RequestError(422, f"images[{i}] is not valid base64. Send the file's bytes base64-encoded.") from exc
    names = [f"#{i}" for i in range(len(raw or request.texts or []))]
    return names, raw, list(request.texts or []), request.top_k


def _top_k(value: Any, default: int) -> int:
    if value is None:
        return default
    try:
        top_k = int(value)
    except (TypeError, ValueError):
        top_k = 0
    if top_k < 1 or isinstance(value, bool) or (isinstance(value, str) and not value.strip().isdigit()):
        raise RequestError(422, f"top_k must be a positive integer; got {value!r}.")
    return top_k


# --- decoding, preparing and answering ------------------------------------------------------------------------------


def _prepare_all(predictor: Predictor, items: list[Any], config: ServeConfig) -> list[Any]:
    """Decode and check every input, then turn it into a model-ready item (runs in a worker thread)."""
    prepared = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item.strip():
                raise RequestError(422, f"texts[{i}] is empty. Send non-empty texts.")
            if len(item) > config.max_text_chars:
                raise RequestError(413, f"texts[{i}] has {len(item)} characters; at most {config.max_text_chars}.")
            prepared.append(predictor.prepare(item))
        else:
            prepared.append(predictor.prepare(_decode_image(item, i, config.max_image_pixels)))
    return prepared


def _decode_image(data: bytes, index: int, max_pixels: int) -> Image.Image:
    """An RGB image from encoded bytes; the size is checked from the header before any pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as exc:
        raise RequestError(413, f"Image #{index} is too large to decode safely ({exc}).") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RequestError(422, f"Input #{index} is not a readable image ({', '.join(IMAGE_FORMATS)}).") from exc
    if width * height > max_pixels:
        raise RequestError(413, f"Image #{index} is {width} x {height} = {width * height} pixels; at most "
                                f"{max_pixels}. Resize it before sending.")
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        image.load()
    except Image.DecompressionBombError as exc:
        raise RequestError(413, f"Image #{index} is too large to decode safely ({exc}).") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise RequestError(422, f"Image #{index} could not be decoded ({type(exc).__name__}: truncated or "
                                "corrupt).") from exc
    try:
        return to_rgb(image)  # as training and predict read images (16-bit scaled, alpha over white)
    except TransferKitError as exc:
        raise RequestError(422, f"Image #{index}: {exc}") from exc


def _prediction(name: str, row: np.ndarray, classes: list[str], top_k: int) -> dict[str, Any]:
    order = np.argsort(-row)[:min(top_k, len(classes))]
    top = [{"label": classes[i], "probability": float(row[i])} for i in order]
    return {"source": name, "label": top[0]["label"], "probability": top[0]["probability"], "top_k": top}


__all__ = ["API_KEY_ENV", "RequestError", "ServeConfig", "create_app", "serve", "with_env_api_key"]
