"""Warm-up: run a new version before it takes traffic.

TF Serving's convention: `<version>/assets.extra/tf_serving_warmup_requests`
is a TFRecord file of `PredictionLog`s; each predict, classify or regress log
is replayed against the servable (its recorded response is ignored). Without
that file, serving_default runs once on a zero batch built from its
signature. Any failure fails the load, naming the record and the reason, so
a version that cannot answer never becomes AVAILABLE.
"""

from __future__ import annotations

from pathlib import Path

from mlmesh.errors import MlmeshError

from serving_svc.core.examples import serialized_examples
from serving_svc.core.inputs import prepare_tensors
from serving_svc.core.loader import LoadError, Servable, check_batch_outputs
from serving_svc.core.signature import CLASSIFY_METHOD, EXAMPLES_INPUT, REGRESS_METHOD
from serving_svc.core.tfs_codec import arrays_from_protos

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
# TF Serving reads at most this many records (servables/tensorflow/saved_model_warmup_util).
MAX_RECORDS = 1000
MAX_EXAMPLES = 1 << 20


def warm_up(servable: Servable) -> int:
    """Warm `servable` up; returns the number of requests replayed (0 = synthetic).
    Raises LoadError."""
    path = servable.path / WARMUP_FILE
    if not path.is_file():
        servable.warm_up()
        return 0
    return replay(servable, path)


def _records(path: Path) -> list[bytes]:
    import tensorflow as tf

    try:
        return [r.numpy() for r in tf.data.TFRecordDataset(str(path)).take(MAX_RECORDS + 1)]
    except Exception as e:
        raise LoadError(f"cannot read warm-up requests {path}: {type(e).__name__}: {e}") from e


def replay(servable: Servable, path: Path) -> int:
    from tensorflow_serving.apis import prediction_log_pb2

    records = _records(path)
    if len(records) > MAX_RECORDS:
        raise LoadError(f"warm-up file {path} holds more than {MAX_RECORDS} requests")
    if not records:
        raise LoadError(f"warm-up file {path} holds no requests")
    for i, record in enumerate(records):
        where = f"warm-up request {i} of {path}"
        try:
            log = prediction_log_pb2.PredictionLog.FromString(record)
        except Exception as e:
            raise LoadError(f"{where} is not a PredictionLog: {e}") from e
        kind = log.WhichOneof("log_type")
        try:
            if kind == "predict_log":
                request = log.predict_log.request
                signature = servable.signature(request.model_spec.signature_name)
                arrays, n = prepare_tensors(
                    signature.inputs, arrays_from_protos(request.inputs), MAX_EXAMPLES
                )
                check_batch_outputs(servable.call(signature.name, arrays), n)
            elif kind in ("classify_log", "regress_log"):
                request = log.classify_log.request if kind == "classify_log" else log.regress_log.request
                method = CLASSIFY_METHOD if kind == "classify_log" else REGRESS_METHOD
                signature = servable.signature(request.model_spec.signature_name)
                if signature.method != method:
                    raise LoadError(
                        f"signature {signature.name!r} is a {signature.method} signature, not {method}"
                    )
                examples = serialized_examples(request.input)
                check_batch_outputs(servable.call(signature.name, {EXAMPLES_INPUT: examples}), len(examples))
            else:
                raise LoadError(
                    f"holds a {kind or 'empty log'}; only predict, classify and regress logs replay"
                )
        except LoadError as e:
            raise LoadError(f"{where} failed: {e}") from None
        except MlmeshError as e:
            raise LoadError(f"{where} failed: {e.message}") from None
        except Exception as e:
            raise LoadError(f"{where} failed: {type(e).__name__}: {e}") from e
    return len(records)
