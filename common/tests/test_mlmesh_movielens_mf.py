"""mlmesh.models.movielens_mf: structure, arguments, row-local regularisation, sparse gradients."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from mlmesh.models import movielens_mf as mf

pytestmark = pytest.mark.unit

TABLES = list(mf.SPARSE_VARIABLES)


def batch(users: list[int], items: list[int]) -> dict[str, np.ndarray]:
    return {"user": np.array(users, np.int64), "item": np.array(items, np.int64)}


def test_import_does_not_load_tensorflow() -> None:
    code = "import sys, mlmesh.models.movielens_mf; sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_four_tables_are_sparse_and_the_global_bias_is_dense() -> None:
    spec = mf.build(dim="8")
    shapes = {v.path: tuple(v.shape) for v in spec.model.trainable_variables}
    assert shapes == {
        "user_embedding/embeddings": (943, 8),
        "item_embedding/embeddings": (1682, 8),
        "user_bias/embeddings": (943, 1),
        "item_bias/embeddings": (1682, 1),
        "global_bias/bias": (1,),
    }
    assert list(spec.sparse_variables) == TABLES
    assert (list(spec.features), spec.label) == (["user", "item"], "rating")
    assert [m().name for m in spec.metrics] == ["rmse"]


def test_prediction_is_dot_plus_biases_plus_global_mean() -> None:
    spec = mf.build(dim="4")
    values = {v.path: v for v in spec.model.trainable_variables}
    rng = np.random.default_rng(0)
    for name in TABLES:
        values[name].assign(rng.normal(0, 0.3, values[name].shape).astype(np.float32))
    values["global_bias/bias"].assign([0.25])
    u, i = [3, 7], [5, 1]
    got = np.asarray(spec.model(batch(u, i), training=False))
    p, q = (values[n].numpy() for n in TABLES[:2])
    bu, bi = (values[n].numpy()[:, 0] for n in TABLES[2:])
    want = mf.GLOBAL_MEAN + 0.25 + bu[u] + bi[i] + np.sum(p[u] * q[i], axis=1)
    assert got.shape == (2,)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_predictions_are_clipped_to_the_rating_scale_only_at_inference() -> None:
    spec = mf.build()
    [bias] = [v for v in spec.model.trainable_variables if v.path == "global_bias/bias"]
    bias.assign([10.0])
    x = batch([0], [0])
    assert float(spec.model(x, training=False)[0]) == 5.0
    assert float(spec.model(x, training=True)[0]) > 13.0  # a gradient still flows in training
    assert float(mf.build(clip="false").model(x, training=False)[0]) != 5.0


def _loss_and_grads(spec: Any, x: dict[str, np.ndarray], y: np.ndarray) -> tuple[float, list[Any]]:
    import tensorflow as tf

    model = spec.model
    with tf.GradientTape() as tape:
        pred = model(x, training=True)
        loss = spec.loss(y, pred) + tf.add_n(model.losses)
    return float(loss), tape.gradient(loss, model.trainable_variables)


def test_l2_is_on_the_looked_up_rows_and_every_table_gradient_is_sparse() -> None:
    import tensorflow as tf

    spec = mf.build(dim="4", reg="0.5", bias_reg="0.25")
    values = {v.path: v for v in spec.model.trainable_variables}
    rng = np.random.default_rng(1)
    for name in TABLES:
        values[name].assign(rng.normal(0, 0.3, values[name].shape).astype(np.float32))
    u, i = [2, 2, 9], [4, 6, 4]
    x, y = batch(u, i), np.array([4.0, 3.0, 1.0], np.float32)
    loss, grads = _loss_and_grads(spec, x, y)

    p, q, bu, bi = (values[n].numpy() for n in TABLES)
    pred = np.asarray(spec.model(x, training=True))
    mse = np.mean((pred - y) ** 2)
    penalty = 0.5 * (np.mean(np.sum(p[u] ** 2, 1)) + np.mean(np.sum(q[i] ** 2, 1)))
    penalty += 0.25 * (np.mean(bu[u, 0] ** 2) + np.mean(bi[i, 0] ** 2))
    assert loss == pytest.approx(mse + penalty, rel=1e-5)
    by_name = dict(zip([v.path for v in spec.model.trainable_variables], grads, strict=True))
    for name, ids in zip(TABLES, [u, i, u, i], strict=True):
        grad = by_name[name]
        # The push carries only the batch's rows: no table-wide regulariser gradient.
        assert isinstance(grad, tf.IndexedSlices), name
        assert set(np.asarray(grad.indices).tolist()) == set(ids), name
    assert not isinstance(by_name["global_bias/bias"], tf.IndexedSlices)


def test_losses_do_not_pile_up_across_calls() -> None:
    spec = mf.build()
    x = batch([0, 1], [0, 1])
    spec.model(x, training=True)
    spec.model(x, training=True)
    assert len(spec.model.losses) == 2  # user and item L2; bias_reg is 0 by default


def test_the_optional_mlp_adds_dense_variables_only() -> None:
    spec = mf.build(dim="8", mlp="16")
    dense = [v.path for v in spec.model.trainable_variables if v.path not in TABLES]
    assert sorted(dense) == [
        "global_bias/bias",
        "mlp_hidden/bias",
        "mlp_hidden/kernel",
        "mlp_out/bias",
        "mlp_out/kernel",
    ]
    assert np.asarray(spec.model(batch([1], [2]), training=False)).shape == (1,)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"depth": "3"}, r"unknown model_args \['depth'\]; movielens_mf accepts \[.*'dim'"),
        ({"dim": "x"}, r"model_args\['dim'\] = 'x' is not an integer"),
        ({"dim": "0"}, r"model_args\['dim'\] = 0 is outside 1..1024"),
        ({"reg": "-1"}, r"model_args\['reg'\] = -1.0 is outside 0.0..100.0"),
        ({"reg": "nan"}, r"model_args\['reg'\] = 'nan' is not finite"),
        ({"init_std": "big"}, r"model_args\['init_std'\] = 'big' is not a number"),
        ({"clip": "maybe"}, r"model_args\['clip'\] = 'maybe' is not one of"),
    ],
)
def test_bad_model_args_name_the_argument_and_the_expectation(args: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mf.parse_args(args)


def test_model_args_arrive_as_strings_and_default_to_the_tuned_values() -> None:
    assert mf.parse_args({}) == mf.Config()
    cfg = mf.parse_args({"dim": "32", "reg": "0.05", "mlp": "8", "clip": "no", "num_items": "10"})
    assert (cfg.dim, cfg.reg, cfg.mlp, cfg.clip, cfg.num_items) == (32, 0.05, 8, False, 10)
