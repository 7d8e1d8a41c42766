"""Load generator for a serving replica (not a test; no timed asserts anywhere).

    # export a small model into a repository (needs TensorFlow):
    python -m serving_svc.tests.loadgen export --repo /tmp/repo --kind mlp
    # start:  python -m serving_svc --model-repo /tmp/repo --port-file /tmp/s.json
    # load it from this (separate) process:
    python -m serving_svc.tests.loadgen run --addr 127.0.0.1:PORT --model mlp --concurrency 16 --seconds 10

`run` sends batch-1 Predict requests from `concurrency` grpc.aio workers
over one channel and prints requests/s and latency percentiles as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import grpc
import numpy as np
from mlmesh import tensor
from mlmesh.serving.v1 import serving_pb2, serving_pb2_grpc


def export(repo: Path, kind: str) -> Path:
    import keras
    import tensorflow as tf

    from serving_svc.tests.helpers import export as export_module

    inputs = keras.Input((28, 28), name="image")
    if kind == "mlp":  # 784 → 256 → 128 → 10, as in FIELD-NOTES
        x = keras.layers.Flatten()(inputs)
        x = keras.layers.Dense(256, activation="relu")(x)
        x = keras.layers.Dense(128, activation="relu")(x)
    else:  # a small CNN like mlmesh.models.fashion_cnn
        x = keras.layers.Reshape((28, 28, 1))(inputs)
        x = keras.layers.Conv2D(16, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Conv2D(32, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(64, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))

    class Module(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="image")])
        def serve(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"probabilities": self.model(image / 255.0)}

    return export_module(Module(), repo, kind, 1)


async def run(addr: str, model: str, concurrency: int, seconds: float, warmup: float) -> dict[str, float]:
    x = np.random.default_rng(0).integers(0, 256, (1, 28, 28)).astype(np.uint8)
    request = serving_pb2.PredictRequest(model_name=model, inputs={"image": tensor.to_proto(x)})
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = serving_pb2_grpc.ServingServiceStub(channel)
        await stub.Predict(request, timeout=30)
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + seconds

        async def worker() -> None:
            nonlocal errors
            while (now := time.perf_counter()) < stop_at:
                try:
                    await stub.Predict(request, timeout=30)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if now >= measure_from:
                    latencies.append(time.perf_counter() - now)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    lat = np.array(latencies) * 1000
    return {
        "requests_per_second": round(len(latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "requests": len(latencies),
        "errors": errors,
        "concurrency": concurrency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--repo", type=Path, required=True)
    ex.add_argument("--kind", choices=["mlp", "cnn"], default="mlp")
    rn = sub.add_parser("run")
    rn.add_argument("--addr", required=True)
    rn.add_argument("--model", default="mlp")
    rn.add_argument("--concurrency", type=int, default=16)
    rn.add_argument("--seconds", type=float, default=10.0)
    rn.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    if args.cmd == "export":
        print(export(args.repo, args.kind))
    else:
        print(
            json.dumps(asyncio.run(run(args.addr, args.model, args.concurrency, args.seconds, args.warmup)))
        )


if __name__ == "__main__":
    main()
