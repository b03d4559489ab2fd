#!/bin/sh
# The marble image's entrypoint (infra/Dockerfile).
#
#   docker run marble:cpu run --n 200               ->  marble run --n 200
#   docker run marble:cpu prefect flow-run execute  ->  prefect flow-run execute
#
# Arguments that start with one of the programs below run as given: Prefect's Docker and
# Kubernetes workers start a flow run with `prefect flow-run execute`, and the compose file
# starts the Prefect worker and the MLflow server from this image. Anything else is a
# `marble` subcommand.
set -e
case "${1:-}" in
    prefect | mlflow | python | python3 | torchrun | marble | sh | bash)
        exec "$@"
        ;;
esac
exec marble "$@"
