#!/bin/sh
# The one-shot `setup` service of infra/compose.yaml, run from the marble image in
# /opt/marble once the Prefect server and the S3 store are healthy. It does what `marble up`
# does for its own server (tasks/runtime/services.py), against the compose services:
#   1. the MLflow artifact bucket (MLflow does not create it);
#   2. the process work pool $MARBLE_POOL and the `gpu` tag's concurrency limit;
#   3. the deployments of infra/prefect.yaml on that pool.
# Every step can run again: a second `up` leaves the same state.
set -eu

python -c '
import os, boto3
from botocore.exceptions import ClientError
bucket, region = os.environ["MLFLOW_BUCKET"], os.environ["AWS_DEFAULT_REGION"]
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
try:
    s3.head_bucket(Bucket=bucket)
except ClientError:
    where = {} if region == "us-east-1" else {"LocationConstraint": region}
    s3.create_bucket(Bucket=bucket, **({"CreateBucketConfiguration": where} if where else {}))
print(f"bucket s3://{bucket} ready")
'

prefect work-pool create "$MARBLE_POOL" --type process --overwrite
prefect concurrency-limit create gpu "$MARBLE_GPUS"
prefect --no-prompt deploy --all --prefect-file infra/prefect.yaml
