"""Memory check for `muratune serve`: decompression bombs, stalled uploads and 8 worst-case requests on one replica.

Starts local Ray and the Serve application (one model replica) on a free loopback port, then:

1. posts a 164 KB PNG declaring 13000 x 13000 pixels once: status, latency, and each Serve process's RSS before and
   after;
2. posts it from 8 threads at once;
3. posts a 0.4 MB Deflated DICOM (transfer syntax 1.2.840.10008.1.2.1.99) declaring 64 x 64 pixels whose Pixel Data
   inflates to 400 MB, once and from 8 threads at once;
4. holds 20 uploads open that sent their headers and first bytes, and meanwhile times GET /health and a real POST;
   then waits for the server to close them (its body read timeout);
5. posts the largest legitimate study the default limits allow (views at the per-image pixel cap, up to the request's
   pixel budget, RGBA: the most bytes per pixel while decoding) from 8 threads at once.

Each phase reads each Serve process's peak RSS (VmHWM, reset before the phase through /proc/PID/clear_refs).

    python -m bench.serve_memory demo-out/runs/demo/ensemble/greedy
"""

from __future__ import annotations

import argparse
import io
import math
import socket
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

MB = 1024 * 1024
STALLED = 20
_PIXEL_DATA_OW = b"\xe0\x7f\x10\x00OW\x00\x00"  # (7FE0,0010) OW, explicit VR little endian


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ensemble", type=Path, help="ensemble folder (EXPERIMENT/ensemble/<strategy>)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent requests per phase")
    parser.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    parser.add_argument("--endpoint", choices=["predict", "cam"], default="cam")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bomb_png(width: int = 13_000, height: int = 13_000) -> bytes:
    """A valid 8-bit gray PNG of zeros declaring ``width x height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\x00" * (width + 1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def deflate_bomb(pixel_bytes: int = 400 * MB) -> bytes:
    """A Deflated DICOM declaring 64 x 64 pixels whose Pixel Data inflates to ``pixel_bytes`` zeros."""
    import numpy as np
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from muratune.data.dicom import encode_dicom
    from muratune.data.dicom_inflate import read_meta

    ds = pydicom.dcmread(io.BytesIO(encode_dicom(np.zeros((64, 64), np.uint8))))
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    written = io.BytesIO()
    ds.save_as(written, enforce_file_format=True)
    stream = io.BytesIO(written.getvalue())
    read_meta(stream)
    header = zlib.decompress(written.getvalue()[stream.tell() :], -zlib.MAX_WBITS)
    packer, zeros = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS), bytes(MB)
    parts = [packer.compress(header + _PIXEL_DATA_OW + struct.pack("<I", pixel_bytes))]
    parts += [packer.compress(zeros) for _ in range(pixel_bytes // MB)]
    return written.getvalue()[: stream.tell()] + b"".join([*parts, packer.flush()])


def largest_legitimate_study() -> list[tuple[str, bytes]]:
    """RGBA PNG views at the per-image cap, as many as the request's pixel budget allows."""
    from PIL import Image

    from muratune.serve.app import ServeLimits

    limits = ServeLimits()
    side = math.isqrt(limits.max_pixels)
    out = io.BytesIO()
    Image.new("RGBA", (side, side), (90, 90, 90, 255)).save(out, format="PNG")
    views = limits.max_request_pixels // (side * side)
    return [(f"view{i + 1}.png", out.getvalue()) for i in range(views)]


def serve_processes() -> dict[str, int]:
    """PIDs of this run's Serve actors (descendants of this driver): the model replica, the ingress and the proxy."""
    import psutil

    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        for key, label in (("EnsembleModel", "model replica"), ("HttpIngress", "ingress"), ("ProxyActor", "proxy")):
            if key in title:
                found[label] = proc.pid
    return found


def status(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def post_many(url: str, payload: list[tuple[str, bytes]], n: int, timeout: float) -> list[tuple[int, float, str]]:
    def one(_: int) -> tuple[int, float, str]:
        files = [("files", (name, data, "image/png")) for name, data in payload]
        start = time.perf_counter()
        response = requests.post(url, files=files, timeout=timeout)
        detail = response.json().get("detail", "") if response.status_code != 200 else ""
        return response.status_code, time.perf_counter() - start, str(detail)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def show(title: str, pids: dict[str, int], before: dict[str, dict], peak: bool) -> None:
    print(title)
    for label, pid in pids.items():
        now = status(pid)
        line = f"  {label:13s} pid {pid}: RSS {before[label]['VmRSS']:.0f} MB before, {now['VmRSS']:.0f} MB after"
        if peak:
            line += f", peak {now['VmHWM']:.0f} MB (+{now['VmHWM'] - before[label]['VmRSS']:.0f} MB)"
        print(line)


def phase(title, url, payload, n, timeout, pids, peak) -> None:
    for pid in pids.values():
        reset_peak(pid)
    before = {label: status(pid) for label, pid in pids.items()}
    start = time.perf_counter()
    results = post_many(url, payload, n, timeout)
    wall = time.perf_counter() - start
    codes = sorted({code for code, _, _ in results})
    latencies = sorted(t for _, t, _ in results)
    detail = f"; detail: {results[0][2]}" if results[0][2] else ""
    print(
        f"{title}: {n} request(s), status {codes}, latency min {latencies[0]:.3f} s, max {latencies[-1]:.3f} s, "
        f"wall {wall:.2f} s{detail}"
    )
    show("  memory:", pids, before, peak)


def stalled_upload(url: str) -> socket.socket:
    """A raw connection that sends a multipart upload's headers and first bytes, then holds it open."""
    host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    part = b'--stall\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n\x89PNG\r\n'
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 1000000\r\n"
        "Content-Type: multipart/form-data; boundary=stall\r\n\r\n"
    )
    sock.sendall(head.encode() + part)
    return sock


def seconds_until_closed(sock: socket.socket, opened: float, timeout: float) -> tuple[float, bytes]:
    """Seconds from ``opened`` until the server closes ``sock``, and the status line it sent first."""
    received = b""
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return math.inf, received.split(b"\r\n")[0]
    return time.monotonic() - opened, received.split(b"\r\n")[0]


def stalled_phase(base: str, legit: list[tuple[str, bytes]], pids: dict[str, int], timeout: float) -> None:
    """Hold STALLED uploads open; time /health and a real POST meanwhile, then how soon the stalled ones are closed."""
    for pid in pids.values():
        reset_peak(pid)
    before: dict[str, Any] = {label: status(pid) for label, pid in pids.items()}
    opened = time.monotonic()
    sockets = [stalled_upload(base) for _ in range(STALLED)]
    try:
        start = time.perf_counter()
        health = requests.get(f"{base}/health", timeout=timeout)
        health_s = time.perf_counter() - start
        [(code, predict_s, _)] = post_many(f"{base}/predict", legit, 1, timeout)
        closed = [seconds_until_closed(sock, opened, timeout) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    answers = sorted({line.decode(errors="replace") for _, line in closed})
    print(
        f"{STALLED} stalled uploads: /health {health.status_code} in {health_s:.3f} s, POST /predict {code} in "
        f"{predict_s:.2f} s; stalled ones closed after {min(t for t, _ in closed):.1f}-{max(t for t, _ in closed):.1f}"
        f" s with {answers}"
    )
    show("  memory:", pids, before, peak=True)


def main() -> int:
    args = parse_args()
    import ray
    from ray import serve

    from muratune.serve.deploy import ServeOptions, start_server

    bomb = [("bomb.png", bomb_png())]
    legit = largest_legitimate_study()
    dicom_bomb = [("bomb.dcm", deflate_bomb())]
    print(
        f"bomb: {len(bomb[0][1]) / 1024:.0f} KB declaring 13000x13000; Deflated DICOM bomb: "
        f"{len(dicom_bomb[0][1]) / 1024:.0f} KB inflating to 400 MB; legitimate study: {len(legit)} RGBA view(s) "
        f"of {len(legit[0][1]) / 1024:.0f} KB at the per-image cap"
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=400 * MB)
    try:
        base = start_server(args.ensemble, ServeOptions(port=free_port()))
        url = f"{base}/{args.endpoint}"
        small = largest_legitimate_study_small()
        post_many(url, small, 1, args.timeout)  # warm-up: the model replica has run once
        pids = serve_processes()
        print("processes: " + ", ".join(f"{label} {pid}" for label, pid in pids.items()))
        phase("bomb, once", url, bomb, 1, args.timeout, pids, peak=True)
        phase("bomb, concurrent", url, bomb, args.concurrency, args.timeout, pids, peak=True)
        phase("Deflated DICOM bomb, once", url, dicom_bomb, 1, args.timeout, pids, peak=True)
        phase("Deflated DICOM bomb, concurrent", url, dicom_bomb, args.concurrency, args.timeout, pids, peak=True)
        stalled_phase(base, small, pids, args.timeout)
        phase("largest legitimate study, concurrent", url, legit, args.concurrency, args.timeout, pids, peak=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def largest_legitimate_study_small() -> list[tuple[str, bytes]]:
    """One small view, to warm the replica up."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (512, 512), 90).save(out, format="PNG")
    return [("warm.png", out.getvalue())]


if __name__ == "__main__":
    raise SystemExit(main())
