"""Load on `funasr-nano-mlx serve`: requests per second, audio seconds per second and p50/p95 latency at
several numbers of concurrent clients (the openai client, one thread each), on 127.0.0.1 only.

    python bench/serve_load.py MODEL [--clients 1 8 32] [--requests 64] [--max-seconds 120]
                               [--min-s 5 --max-s 30] [--clips 16] [--max-batch 16] [--batch-wait-ms 100]
    python bench/serve_load.py --url http://127.0.0.1:8000/v1 ...   # a server already running here

With MODEL, a server is started on a free loopback port and stopped at the end. Each level sends at most
--requests requests and starts none after --max-seconds, so a run stops by itself. The clips are
seeded synthetic audio of --min-s to --max-s seconds (random-weight models decode to their token
budget whatever the content: the length is what counts). One warm-up request comes first. One JSON
line per level:

    clients, requests, errors, wall_s, requests_per_s, audio_s_per_s, p50_s, p95_s, batch_sizes

(batch_sizes: segments per decoder batch during that level, from the server's /metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from speed import SAMPLE_RATE, synthetic_audio  # bench/ is on sys.path when run as a script

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def write_clips(folder: Path, count: int, low: float, high: float) -> list[tuple[Path, float]]:
    import soundfile as sf

    lengths = np.random.default_rng(0).uniform(low, high, count)
    clips = []
    for index, seconds in enumerate(lengths):
        path = folder / f"clip{index:03d}.wav"
        sf.write(str(path), synthetic_audio(round(float(seconds), 2)), SAMPLE_RATE)
        clips.append((path, round(float(seconds), 2)))
    return clips


def start_server(model: str, max_batch: int, batch_wait_ms: float, key: str) -> tuple[subprocess.Popen, str]:
    command = [
        sys.executable,
        "-m",
        "funasr_nano_mlx",
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--max-batch",
        str(max_batch),
        "--batch-wait-ms",
        str(batch_wait_ms),
        "--max-queue",
        "256",
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "FUNASR_NANO_MLX_API_KEY": key}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()  # "serving NAME on URL", printed once the model is loaded
    if " on http://" not in line:
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return process, line.split(" on ")[-1].strip()


def metrics(url: str, key: str) -> dict:
    import httpx

    root = url.removesuffix("/v1")
    return httpx.get(f"{root}/metrics", headers={"Authorization": f"Bearer {key}"}).json()


def level(url: str, key: str, clients: int, clips, requests: int, max_seconds: float) -> dict:
    """`requests` requests from `clients` threads, none started after max_seconds."""
    import openai

    client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)
    start = time.perf_counter()
    before = metrics(url, key)["batch_sizes"]

    def one(index: int):
        if time.perf_counter() - start > max_seconds:
            return None
        path, seconds = clips[index % len(clips)]
        sent = time.perf_counter()
        try:
            client.audio.transcriptions.create(file=path, model="bench")
        except openai.OpenAIError:
            return (time.perf_counter() - sent, seconds, False)
        return (time.perf_counter() - sent, seconds, True)

    with ThreadPoolExecutor(clients) as pool:
        done = [result for result in pool.map(one, range(requests)) if result is not None]
    wall = time.perf_counter() - start
    after = metrics(url, key)["batch_sizes"]
    latencies = [latency for latency, _, ok in done if ok]
    return {
        "clients": clients,
        "requests": len(done),
        "errors": sum(not ok for _, _, ok in done),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 3),
        "audio_s_per_s": round(sum(seconds for _, seconds, ok in done if ok) / wall, 2),
        "p50_s": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
        "p95_s": round(float(np.percentile(latencies, 95)), 3) if latencies else None,
        "batch_sizes": {
            size: count - before.get(size, 0) for size, count in after.items() if count - before.get(size, 0)
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="a converted model directory to serve (or give --url)")
    parser.add_argument("--url", help="a server already running on this machine, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default=os.environ.get("FUNASR_NANO_MLX_API_KEY", "bench"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=64, help="at most this many requests per level")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="start no request after this, per level")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--min-s", type=float, default=5.0)
    parser.add_argument("--max-s", type=float, default=30.0)
    parser.add_argument("--max-batch", type=int, default=16, help="the started server's --max-batch")
    parser.add_argument("--batch-wait-ms", type=float, default=100.0, help="the started server's --batch-wait-ms")
    args = parser.parse_args()
    if (args.model is None) == (args.url is None):
        parser.error("give MODEL (a server is started) or --url (one already running), not both")
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        parser.error("--url must be a server on this machine (127.0.0.1, localhost or ::1)")

    process = None
    with tempfile.TemporaryDirectory() as folder:
        clips = write_clips(Path(folder), args.clips, args.min_s, args.max_s)
        try:
            url = args.url
            if args.model:
                process, url = start_server(args.model, args.max_batch, args.batch_wait_ms, args.api_key)
            level(url, args.api_key, 1, clips[:1], 1, args.max_seconds)  # warm-up
            for clients in args.clients:
                print(json.dumps(level(url, args.api_key, clients, clips, args.requests, args.max_seconds)), flush=True)
        finally:
            if process is not None:
                process.terminate()
                process.wait(60)


if __name__ == "__main__":
    main()
