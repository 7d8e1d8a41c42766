"""Models shaped like TF Serving's own examples, and its warm-up file, for the compatibility tests.

- `export_half_plus_three`: TF Serving's toy model from its REST docs, built the
  TF1 way (SavedModelBuilder) so its SignatureDefs carry the predict, classify
  and regress methods: serving_default x → y = 0.5x + 3 (predict),
  "tensorflow/serving/regress" and "tensorflow/serving/classify" on
  serialized tf.Examples with a float feature "x".
- `SensorModel`: inputs named as in the REST docs' row/columnar example
  (tag: string, signal: [5], sensor: [2,2]) and a second signature.
- `write_warmup`: `assets.extra/tf_serving_warmup_requests` of PredictionLogs.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2, regression_pb2

from serving_svc.core.warmup import WARMUP_FILE


def _rename_into(tmp: Path, repo: Path, name: str, version: int) -> Path:
    final = repo / name / str(version)
    os.rename(tmp, final)
    return final


def export_half_plus_three(repo: Path, name: str = "half_plus_three", version: int = 123) -> Path:
    (repo / name).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=repo / name))
    os.rmdir(tmp)  # the builder wants to create the directory itself
    v1 = tf.compat.v1
    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as session:
        a = v1.Variable(0.5, name="a")
        b = v1.Variable(3.0, name="b")
        x = v1.placeholder(tf.float32, [None], name="x")
        y = tf.add(a * x, b, name="y")
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        features = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        regressed = a * features["x"] + b  # [batch, 1]
        scores = tf.concat([regressed, -regressed], axis=1)
        classes = tf.tile(tf.constant([["high", "low"]]), [tf.shape(serialized)[0], 1])
        session.run(v1.global_variables_initializer())
        builder = v1.saved_model.Builder(str(tmp))
        builder.add_meta_graph_and_variables(
            session,
            [v1.saved_model.tag_constants.SERVING],
            signature_def_map={
                "serving_default": v1.saved_model.predict_signature_def({"x": x}, {"y": y}),
                "tensorflow/serving/regress": v1.saved_model.regression_signature_def(serialized, regressed),
                "tensorflow/serving/classify": v1.saved_model.classification_signature_def(
                    serialized, classes, scores
                ),
            },
        )
        builder.save()
    return _rename_into(tmp, repo, name, version)


class SensorModel(tf.Module):
    """The REST docs' inputs: "tag" (string), "signal" ([5]), "sensor" ([2,2])."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="tag"),
            tf.TensorSpec([None, 5], tf.float32, name="signal"),
            tf.TensorSpec([None, 2, 2], tf.float32, name="sensor"),
        ]
    )
    def serve(self, tag: tf.Tensor, signal: tf.Tensor, sensor: tf.Tensor) -> dict[str, tf.Tensor]:
        return {
            "tag_length": tf.strings.length(tag),
            "total": tf.reduce_sum(signal, axis=1) + tf.reduce_sum(sensor, axis=[1, 2]),
        }

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32, name="signal")])
    def peak(self, signal: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"peak": tf.reduce_max(signal, axis=1)}


def export_sensor_model(repo: Path, name: str = "sensor", version: int = 1) -> Path:
    module = SensorModel()
    (repo / name).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=repo / name))
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve, "peak": module.peak})
    return _rename_into(tmp, repo, name, version)


def predict_log(
    model: str, inputs: dict[str, tf.Tensor], signature: str = ""
) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model, signature_name=signature))
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def regress_log(model: str, xs: Sequence[float], signature: str) -> prediction_log_pb2.PredictionLog:
    request = regression_pb2.RegressionRequest(
        model_spec=model_pb2.ModelSpec(name=model, signature_name=signature)
    )
    for x in xs:
        example = request.input.example_list.examples.add()
        example.features.feature["x"].float_list.value.append(x)
    return prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=request))


def write_warmup(version_dir: Path, logs: Sequence[prediction_log_pb2.PredictionLog]) -> Path:
    path = version_dir / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path
