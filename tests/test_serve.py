"""The prediction server: correct answers over loopback, dynamic batching, and 4xx/5xx for bad or excess requests."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

import transferkit
from transferkit.export import export
from transferkit.runtime import load_predictor
from transferkit.serve import ServeConfig, create_app, with_env_api_key

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220)}


def png(colour, size=(40, 30), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def running(app):
    """uvicorn on a free loopback port, in a thread."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class GatedPredictor:
    """A stand-in model whose batches wait until the test opens the gate (to fill the queue deterministically)."""

    classes = ["a", "b"]
    modality = "text"
    runtime = "stub"

    def __init__(self) -> None:
        self.gate = threading.Event()

    def describe(self) -> dict:
        return {"model": "stub"}

    def prepare(self, item):
        return item

    def probabilities(self, items):
        self.gate.wait(20)
        return np.tile(np.array([0.25, 0.75], dtype=np.float32), (len(items), 1))


def test_image_predictions_and_batching_over_loopback(vision_run):
    images = {name: png(colour, seed=i) for i, (name, colour) in enumerate(COLOURS.items())}
    expected = transferkit.load(vision_run).predict_proba([Image.open(io.BytesIO(b)) for b in images.values()])
    app = create_app(load_predictor(vision_run), ServeConfig(max_batch_size=8, max_wait_ms=200))
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        answers = [
            client.post("/predict", files={"file": ("red.png", images["red"], "image/png")}),
            client.post("/predict", json={"images": [base64.b64encode(images["red"]).decode()], "top_k": 1}),
            client.post("/predict?top_k=2", content=images["red"], headers={"content-type": "image/png"}),
        ]
        assert [a.status_code for a in answers] == [200, 200, 200]
        first = [a.json()["predictions"][0] for a in answers]
        assert [p["label"] for p in first] == ["red"] * 3 and first[0]["source"] == "red.png"
        assert [len(p["top_k"]) for p in first] == [3, 1, 2]
        classes = ["blue", "green", "red"]
        got = {t["label"]: t["probability"] for t in first[0]["top_k"]}
        assert got == pytest.approx(dict(zip(classes, expected[0].tolist(), strict=True)), abs=1e-5)  # red

        def ask(name):
            return client.post("/predict", files={"file": (f"{name}.png", images[name], "image/png")})

        names = list(images) * 4
        with ThreadPoolExecutor(12) as pool:
            replies = list(pool.map(ask, names))
        assert [r.json()["predictions"][0]["label"] for r in replies] == names
        stats = client.get("/health").json()["stats"]
        assert stats["inputs"] == 3 + 12 and stats["max_batch_size_seen"] > 1  # concurrent requests were batched
        info = client.get("/info").json()
        assert info["classes"] == classes and info["runtime"] == "pytorch" and info["preprocessing"]["input_size"] == 32


def test_text_predictions_and_batching(text_runs):
    import asyncio

    run = text_runs["cls"]
    texts = ["a wonderful moving film", "the acting was dull and awful", "quite a superb story", "poor"]
    expected = [p.label for p in transferkit.load(run).predict(texts)]
    assert expected == ["pos", "neg", "pos", "neg"]
    app = create_app(load_predictor(run), ServeConfig(max_batch_size=16, max_wait_ms=200))

    async def many(url):
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            replies = await asyncio.gather(*(client.post("/predict", json={"texts": [t]}) for t in texts * 3))
            return [r.json()["predictions"][0]["label"] for r in replies], (await client.get("/health")).json()

    with running(app) as url:
        reply = httpx.post(f"{url}/predict", json={"texts": texts, "top_k": 1}, timeout=30)
        assert [p["label"] for p in reply.json()["predictions"]] == expected
        labels, health = asyncio.run(many(url))
    assert labels == expected * 3 and health["stats"]["max_batch_size_seen"] > 1


def test_serves_an_exported_onnx_file(vision_run, tmp_path):
    result = export(vision_run, "onnx", tmp_path / "pets.onnx", include_preprocessing=True)
    images = [png(colour, seed=7) for colour in COLOURS.values()]
    expected = transferkit.load(vision_run).predict_proba([Image.open(io.BytesIO(b)) for b in images])
    with TestClient(create_app(load_predictor(result.path))) as client:
        reply = client.post("/predict", files=[("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)])
        assert reply.status_code == 200
        for row, prediction in zip(expected, reply.json()["predictions"], strict=True):
            assert prediction["label"] == ["blue", "green", "red"][int(row.argmax())]
            assert prediction["probability"] == pytest.approx(float(row.max()), abs=1e-4)
        assert client.get("/info").json()["runtime"] == "onnxruntime"


def test_bad_requests_get_4xx_and_the_server_keeps_answering(vision_run):
    config = ServeConfig(max_request_bytes=60_000, max_inputs=2, max_image_pixels=100 * 100)
    good = png(COLOURS["green"])
    app = create_app(load_predictor(vision_run), config)
    cases = [
        (413, {"content": b"\0" * 70_000, "headers": {"content-type": "image/png"}}),
        (413, {"files": [("file", (f"{i}.png", good, "image/png")) for i in range(3)]}),
        (413, {"content": png(COLOURS["red"], size=(200, 120)), "headers": {"content-type": "image/png"}}),
        (415, {"content": b"hello", "headers": {"content-type": "text/plain"}}),
        (415, {"content": good}),
        (422, {"content": b'{"images": [', "headers": {"content-type": "application/json"}}),
        (422, {"json": {"images": ["not base64!"]}}),
        (422, {"json": {"images": [base64.b64encode(b"GIF89a but not really").decode()]}}),
        (422, {"json": {"image": [base64.b64encode(good).decode()]}}),
        (422, {"json": {"texts": ["an image model gets no texts"]}}),
        (422, {"json": {"images": [base64.b64encode(good).decode()], "top_k": 0}}),
        (422, {"json": {"images": []}}),
        (422, {"content": good[:60], "headers": {"content-type": "image/png"}}),  # truncated file
        (422, {"files": {"file": ("x.png", good, "image/png")}, "data": {"colour": "green"}}),
    ]
    with TestClient(app) as client:
        for status, request in cases:
            reply = client.post("/predict", **request)
            assert (reply.status_code, request) == (status, request) and isinstance(reply.json()["detail"], str)
            ok = client.post("/predict", files={"file": ("g.png", good, "image/png")})
            assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] == "green"
    with running(app) as url:  # a chunked upload (no content-length) that streams past the limit
        reply = httpx.post(f"{url}/predict", content=(b"\0" * 10_000 for _ in range(10)),
                           headers={"content-type": "image/png"}, timeout=30)
        assert reply.status_code == 413 and "over the limit" in reply.json()["detail"]
        assert httpx.post(f"{url}/predict", content=good, headers={"content-type": "image/png"}).status_code == 200


def test_full_queue_gets_503_and_slow_predictions_504():
    predictor = GatedPredictor()
    app = create_app(predictor, ServeConfig(max_batch_size=1, max_queue=2, timeout_s=20))

    def ask(url, text):  # one client per request: httpx clients are not shared across threads
        return httpx.post(f"{url}/predict", json={"texts": [text]}, timeout=30)

    with running(app) as url, ThreadPoolExecutor(3) as pool:
        pending = [pool.submit(ask, url, f"t{i}") for i in range(3)]
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/health").json()["stats"]["queued"] < 2:  # one in the model, two waiting
            assert time.monotonic() < deadline, (httpx.get(f"{url}/health").json(), [f.done() for f in pending])
            time.sleep(0.01)
        busy = ask(url, "one too many")
        assert busy.status_code == 503 and "busy" in busy.json()["detail"]
        predictor.gate.set()
        assert [f.result().status_code for f in pending] == [200, 200, 200]
        assert ask(url, "again").json()["predictions"][0]["label"] == "b"
        assert httpx.get(f"{url}/health").json()["stats"]["rejected_queue_full"] == 1

    slow = GatedPredictor()
    with TestClient(create_app(slow, ServeConfig(timeout_s=0.3))) as client:
        reply = client.post("/predict", json={"texts": ["slow"]})
        assert reply.status_code == 504 and "longer than 0.3 s" in reply.json()["detail"]
        slow.gate.set()
        assert client.post("/predict", json={"texts": ["fast now"]}).status_code == 200


def test_api_key(monkeypatch):
    predictor = GatedPredictor()
    predictor.gate.set()
    with TestClient(create_app(predictor, ServeConfig(api_key="s3cret"))) as client:
        assert client.post("/predict", json={"texts": ["x"]}).status_code == 401
        assert client.post("/predict", json={"texts": ["x"]}, headers={"x-api-key": "wrong"}).status_code == 401
        assert client.get("/info").status_code == 401
        assert client.post("/predict", json={"texts": ["x"]}, headers={"x-api-key": "s3cret"}).status_code == 200
        assert client.post("/predict", json={"texts": ["x"]},
                           headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200  # liveness probes need no key
    monkeypatch.setenv("TRANSFERKIT_API_KEY", "from-env")
    assert with_env_api_key(ServeConfig()).api_key == "from-env"
    assert with_env_api_key(ServeConfig(api_key="flag")).api_key == "flag"
    assert "api_key" not in ServeConfig(api_key="flag").public()


def test_bad_settings_and_sources_are_clear_errors(tmp_path):
    from transferkit.errors import TransferKitError

    with pytest.raises(TransferKitError, match="'max_batch_size' parameter must be a positive integer"):
        ServeConfig(max_batch_size=0)
    with pytest.raises(TransferKitError, match="Cannot serve .*missing: pass a finished run folder"):
        load_predictor(tmp_path / "missing")
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(TransferKitError, match="no transferkit sidecar"):
        load_predictor(tmp_path / "model.onnx")
