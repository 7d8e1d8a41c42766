"""Batching and de-duplication settings: TF Serving's knob names, the older names still honoured."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlmesh.settings import load_settings

from serving_svc.config import ServingSettings
from serving_svc.core.batch_options import BatchingOptions

pytestmark = pytest.mark.unit


def test_defaults_keep_the_older_knobs_meaning(tmp_path: Path) -> None:
    settings = load_settings(ServingSettings, ["--model-repo", str(tmp_path)])
    assert settings.batching_options == BatchingOptions(
        max_batch_size=32,
        batch_timeout_micros=2000,  # max_batch_wait_ms 2.0
        max_enqueued_batches=64,
        num_batch_threads=2,  # model_threads
        allowed_batch_sizes=(),
        max_queue=1024,
    )
    assert (settings.dedup_ttl_seconds, settings.dedup_content_hash) == (60.0, False)


def test_tf_serving_flags_set_every_knob(tmp_path: Path) -> None:
    flags = ["--max-batch-size", "16", "--batch-timeout-micros", "500", "--max-enqueued-batches", "3"]
    flags += ["--num-batch-threads", "4", "--allowed-batch-sizes", "4,8,16", "--max-batch-wait-ms", "9"]
    settings = load_settings(
        ServingSettings, ["--model-repo", str(tmp_path), *flags, "--dedup-content-hash", "true"]
    )
    options = settings.batching_options
    assert (options.max_batch_size, options.batch_timeout_micros, options.max_enqueued_batches) == (
        16,
        500,
        3,
    )
    assert (options.num_batch_threads, options.allowed_batch_sizes) == (4, (4, 8, 16))
    assert settings.dedup_content_hash is True


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--allowed-batch-sizes", "4,8"],
            "allowed_batch_sizes [4, 8] must end with max_batch_size (32), not 8",
        ),
        (["--allowed-batch-sizes", "8,4,32"], "must be positive and strictly increasing"),
        (["--allowed-batch-sizes", "4,x"], "allowed_batch_sizes entry 'x' is not a positive integer"),
        (["--max-enqueued-batches", "0"], "invalid setting max_enqueued_batches (--max-enqueued-batches"),
        (["--num-batch-threads", "0"], "invalid setting num_batch_threads"),
        (["--dedup-cache-bytes", "-1"], "invalid setting dedup_cache_bytes"),
    ],
)
def test_bad_batching_values_exit_2_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as e:
        load_settings(ServingSettings, ["--model-repo", str(tmp_path), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    if "allowed" in message:
        assert "invalid setting allowed_batch_sizes (--allowed-batch-sizes" in err
