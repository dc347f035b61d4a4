"""Load check for `muratune serve`: requests/s and latency percentiles of POST /predict against in-process calls.

Starts local Ray and the Serve application on a free loopback port, posts one study N times from a thread pool,
and prints throughput, p50/p95/p99 latency and failures. The baseline, measured in the same run, is the same study
analysed in this process by ``StudyService`` (no HTTP, no Ray): the ratio shows what serving costs per request.

    python -m bench.serve_load demo-out/runs/demo/ensemble/greedy \
        demo-out/data/MURA-v1.1/valid/XR_WRIST/patient00001/study1_positive
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ensemble", type=Path, help="ensemble folder (EXPERIMENT/ensemble/<strategy>)")
    parser.add_argument("study", type=Path, help="a study folder of PNG views")
    parser.add_argument("--requests", type=int, default=200, help="requests to send")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    parser.add_argument("--replicas", type=int, default=1, help="model replicas")
    parser.add_argument("--endpoint", choices=["predict", "cam"], default="predict")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    parser.add_argument("--baseline-calls", type=int, default=20, help="in-process calls for the baseline")
    parser.add_argument("--cam-shifts", type=int, default=2, help="CAM shift averaging per axis (serve --cam-shifts)")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentiles(latencies: list[float]) -> dict[str, float]:
    values = np.asarray(latencies) * 1000
    return {f"p{q}": float(np.percentile(values, q)) for q in (50, 95, 99)} | {"max": float(values.max())}


def in_process_latencies(ensemble: Path, views: list[Path], calls: int, cam_shifts: int) -> list[float]:
    """Seconds per ``StudyService.analyse`` call on the same study, in this process."""
    from muratune.serve.service import StudyService, Upload

    service = StudyService(ensemble, device="cpu", cam_shifts=cam_shifts)
    uploads = [Upload(p.name, p.read_bytes()) for p in views]
    service.analyse(uploads)  # warm-up
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        service.analyse(uploads)
        out.append(time.perf_counter() - start)
    return out


def load(url: str, views: list[Path], n: int, concurrency: int, timeout: float) -> tuple[list[float], list[str], float]:
    """Post the study ``n`` times; return latencies of successes, failure reasons and the wall time."""
    payload = [(p.name, p.read_bytes()) for p in views]

    def one(_: int) -> tuple[float, str | None]:
        files = [("files", (name, data, "image/png")) for name, data in payload]
        start = time.perf_counter()
        try:
            response = requests.post(url, files=files, timeout=timeout)
        except requests.RequestException as err:
            return time.perf_counter() - start, type(err).__name__
        elapsed = time.perf_counter() - start
        return elapsed, None if response.status_code == 200 else f"HTTP {response.status_code}"

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - start
    return [t for t, err in results if err is None], [err for _, err in results if err], wall


def main() -> int:
    args = parse_args()
    import ray
    from ray import serve

    from muratune.serve.deploy import ServeOptions, start_server

    views = sorted(p for p in args.study.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not views:
        raise SystemExit(f"{args.study}: no PNG or JPEG views")
    baseline = in_process_latencies(args.ensemble, views, args.baseline_calls, args.cam_shifts)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2)
    try:
        options = ServeOptions(port=free_port(), replicas=args.replicas, cam_shifts=args.cam_shifts)
        url = f"{start_server(args.ensemble, options)}/{args.endpoint}"
        load(url, views, 5, 1, args.timeout)  # warm-up
        latencies, failures, wall = load(url, views, args.requests, args.concurrency, args.timeout)
    finally:
        serve.shutdown()
        ray.shutdown()
    served = percentiles(latencies) if latencies else {}
    in_proc = percentiles(baseline)
    print(f"study: {len(views)} view(s) from {args.study}; ensemble {args.ensemble}; CAM shifts {args.cam_shifts}")
    print(
        f"in-process StudyService.analyse: {len(baseline)} calls, p50 {in_proc['p50']:.1f} ms, "
        f"p95 {in_proc['p95']:.1f} ms ({1000 / in_proc['p50']:.1f} studies/s on one thread)"
    )
    print(
        f"POST /{args.endpoint}: {args.requests} requests, concurrency {args.concurrency}, "
        f"{args.replicas} replica(s): {len(latencies) / wall:.2f} req/s over {wall:.1f} s"
    )
    if served:
        print("latency ms: " + ", ".join(f"{k} {v:.1f}" for k, v in served.items()))
        print(
            f"served p50 / in-process p50 = {served['p50'] / in_proc['p50']:.2f}; "
            f"mean {statistics.fmean(latencies) * 1000:.1f} ms"
        )
    print(f"failed requests: {len(failures)}" + (f" ({', '.join(sorted(set(failures)))})" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
