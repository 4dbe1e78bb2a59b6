# Beam SDK worker pool for Flink TaskManagers (EXTERNAL environment): Beam's Python SDK image of
# the pinned release (setup.py: apache-beam==2.77.0, Python 3.11) with this project installed, run
# as a sidecar of every TaskManager; it serves localhost:50000 and starts one SDK worker process
# per request. The same image runs the launcher (`python -m pipelines.visits ...`).
#
#   docker build -f deploy/flink/worker.Dockerfile -t REGISTRY/trtc-beam-worker:TAG .
ARG BEAM_VERSION=2.77.0
ARG PYTHON_VERSION=3.11
FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}

WORKDIR /src
COPY setup.py pyproject.toml README.md ./
COPY schemas/ schemas/
COPY transforms/ transforms/
COPY pipelines/ pipelines/
# apache-beam is already the pinned version in this image, so pip keeps it and adds the rest.
RUN pip install --no-cache-dir /src && python -c "import pipelines.visits, transforms.geo"

ENTRYPOINT ["/opt/apache/beam/boot", "--worker_pool"]
