"""Raw splits and the processed data set can live in object storage (s3:// URIs)."""

import json
import uuid

from ssr.cli import main
from ssr.data.synth import SynthOptions, generate
from ssr.steps import preprocess_step
from ssr.storage import read_bytes, upload_dir


def test_preprocess_reads_and_writes_s3(s3_env, tmp_path):
    bucket = s3_env.create_bucket(f"data-{uuid.uuid4().hex[:8]}")
    generate(tmp_path / "raw", SynthOptions(vocab=3, per_word=6, sessions=3, train_sessions=1))
    upload_dir(tmp_path / "raw", f"s3://{bucket}/raw")
    code = main(
        [
            "preprocess",
            f"data.train_dir=s3://{bucket}/raw/train",
            f"data.val_dir=s3://{bucket}/raw/val",
            f"data.test_dir=s3://{bucket}/raw/test",
            f"data.processed_dir=s3://{bucket}/processed",
            f"storage.cache_dir={tmp_path / 'cache'}",
        ]
    )
    assert code == 0
    manifest = json.loads(read_bytes(f"s3://{bucket}/processed/manifest.json"))
    assert len(manifest["labels"]) == 3
    assert manifest["splits"]["test"]["utterances"] > 0
    # The same data set read locally has the same fingerprint: it is content, not location.
    assert (
        main(
            [
                "preprocess",
                f"data.train_dir={tmp_path / 'raw/train'}",
                f"data.val_dir={tmp_path / 'raw/val'}",
                f"data.test_dir={tmp_path / 'raw/test'}",
                f"data.processed_dir={tmp_path / 'local'}",
            ]
        )
        == 0
    )
    local = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert local["fingerprint"] == manifest["fingerprint"]


def test_pipeline_preprocess_step_mirrors_s3_data_with_the_config_endpoint(
    s3_env, tmp_path, monkeypatch
):
    """The step reads s3:// raw data with ``storage.*`` from the config, not only from env."""
    bucket = s3_env.create_bucket(f"step-{uuid.uuid4().hex[:8]}")
    generate(tmp_path / "raw", SynthOptions(vocab=3, per_word=6, sessions=3, train_sessions=1))
    upload_dir(tmp_path / "raw", f"s3://{bucket}/raw")
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    artifact = tmp_path / "artifact"
    overrides = [f"storage.endpoint_url={s3_env.endpoint}", "tracking.wandb.enabled=false"]
    result = preprocess_step(str(artifact), f"s3://{bucket}/raw", "", overrides, [])
    assert result["utterances"]["test"] == len(list((tmp_path / "raw/test").rglob("*.npz")))
    kept = sorted(p.name for p in (artifact / "raw" / "test").rglob("*.npz"))
    assert kept == sorted(p.name for p in (tmp_path / "raw/test").rglob("*.npz"))
    assert (artifact / "processed" / "manifest.json").is_file()
    assert sorted(p.name for p in artifact.iterdir()) == ["processed", "raw"]  # no cache left
