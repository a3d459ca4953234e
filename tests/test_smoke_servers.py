"""The loopback servers every integration test relies on actually serve."""

import boto3
import mlflow
from mlflow.tracking import MlflowClient


def test_s3_server_roundtrip(s3_env):
    s3_env.create_bucket("smoke")
    client = boto3.client("s3", endpoint_url=s3_env.endpoint)
    client.put_object(Bucket="smoke", Key="a.txt", Body=b"hello")
    assert client.get_object(Bucket="smoke", Key="a.txt")["Body"].read() == b"hello"


def test_mlflow_server_logs_to_s3(mlflow_server, s3_server, tmp_path):
    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_experiment("smoke")
    with mlflow.start_run() as run:
        mlflow.log_metric("x", 1.0, step=3)
        (tmp_path / "f.txt").write_text("artifact")
        mlflow.log_artifact(str(tmp_path / "f.txt"))
    client = MlflowClient(mlflow_server.uri)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "x")] == [3]
    keys = s3_server.keys("mlflow-artifacts", contains=run.info.run_id)
    assert any(k.endswith("f.txt") for k in keys)
