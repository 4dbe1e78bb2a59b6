#!/usr/bin/env bash
# Build the Beam engines the engine tests (tests/engines/, pytest marker `engines`) run on, and
# cache them under .tools/ (gitignored), so a rerun with .tools/ present builds nothing:
#
#   Prism  `go install github.com/apache/beam/sdks/v2/go/cmd/prism@v<apache-beam version>` from the
#          Go module proxy: the same version as the installed Python SDK, never a GitHub download.
#   Flink  Beam's Flink job server jar, shaded by Maven from Maven Central with
#          tools/engines/flink-job-server/pom.xml (why it is assembled, and from which versions,
#          is in that file and in tools/engines/README.md).
#
# Writes .tools/engines.env (KEY=VALUE lines) that tests/engines/conftest.py reads; environment
# variables of the same names win over it. Needs go, mvn and java (17) on PATH, and the project's
# Python (with apache-beam) as `python` or $PYTHON. Any failure stops CI here, before pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=${ENGINES_TOOLS_DIR:-$ROOT/.tools}
PYTHON=${PYTHON:-python}
mkdir -p "$TOOLS"

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "engines: '$1' is not on PATH; it is needed to $2" >&2
    exit 1
  }
}
need "$PYTHON" "read the pinned apache-beam version"
BEAM_VERSION=$("$PYTHON" -c 'import apache_beam; print(apache_beam.__version__)') || {
  echo "engines: $PYTHON cannot import apache_beam; activate the project's venv or set PYTHON" >&2
  exit 1
}

# --- Prism ---------------------------------------------------------------------------------------
PRISM_MODULE=github.com/apache/beam/sdks/v2/go/cmd/prism
PRISM_DIR=$TOOLS/prism/v$BEAM_VERSION
PRISM_BIN=$PRISM_DIR/prism
if [ -x "$PRISM_BIN" ]; then
  echo "engines: prism v$BEAM_VERSION cached at $PRISM_BIN"
else
  need go "build Prism (go install $PRISM_MODULE@v$BEAM_VERSION)"
  echo "engines: building prism v$BEAM_VERSION with $(go version)"
  start=$SECONDS
  rm -rf "$PRISM_DIR.tmp"
  # Module and build caches live under .tools too (-modcacherw: removable without chmod).
  if ! GOBIN=$PRISM_DIR.tmp GOPATH=$TOOLS/go GOMODCACHE=$TOOLS/go/mod GOCACHE=$TOOLS/go/build \
    GOFLAGS=-modcacherw go install "$PRISM_MODULE@v$BEAM_VERSION" >"$TOOLS/prism-build.log" 2>&1; then
    cat "$TOOLS/prism-build.log" >&2
    echo "engines: go install $PRISM_MODULE@v$BEAM_VERSION failed (log above)" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$PRISM_DIR")"
  rm -rf "$PRISM_DIR"
  mv "$PRISM_DIR.tmp" "$PRISM_DIR"
  find "$TOOLS/prism" -mindepth 1 -maxdepth 1 ! -name "v$BEAM_VERSION" -exec rm -rf {} +
  rm -rf "$TOOLS/go" # 1.5 GB of module and build caches: the binary is what is cached
  echo "engines: prism built in $((SECONDS - start))s"
fi

# --- Flink job server ----------------------------------------------------------------------------
POM=$ROOT/tools/engines/flink-job-server/pom.xml
pom_property() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$POM" | head -1; }
FLINK_VERSION=$(pom_property flink.version)
FLINK_RUNNER_VERSION=$(pom_property beam.flink.runner.version)
JOB_SERVICE_VERSION=$(pom_property beam.job.service.version)
POM_KEY=$(sha256sum "$POM" | cut -c1-12)  # a changed pom is a new cache entry
FLINK_DIR=$TOOLS/flink-job-server/$FLINK_RUNNER_VERSION-flink$FLINK_VERSION-$POM_KEY
FLINK_JAR=$FLINK_DIR/beam-flink-job-server.jar
if [ -f "$FLINK_JAR" ]; then
  echo "engines: Flink job server cached at $FLINK_JAR"
else
  need mvn "assemble Beam's Flink job server from Maven Central"
  need java "run Beam's Flink job server"
  echo "engines: assembling the Flink job server (Beam Flink runner $FLINK_RUNNER_VERSION," \
    "Flink $FLINK_VERSION, job service $JOB_SERVICE_VERSION)"
  start=$SECONDS
  rm -rf "$FLINK_DIR"
  mkdir -p "$FLINK_DIR"
  if ! mvn -B -q -f "$POM" -Dmaven.repo.local="$TOOLS/m2" -Djobserver.build.dir="$FLINK_DIR/build" \
    package >"$TOOLS/flink-job-server-build.log" 2>&1; then
    cat "$TOOLS/flink-job-server-build.log" >&2
    echo "engines: mvn package of $POM failed (log above)" >&2
    exit 1
  fi
  shaded=$(find "$FLINK_DIR/build" -maxdepth 1 -name 'beam-flink-job-server-*.jar' ! -name 'original-*')
  mv "$shaded" "$FLINK_JAR.tmp"
  rm -rf "$FLINK_DIR/build"
  mv "$FLINK_JAR.tmp" "$FLINK_JAR"
  # Jars of earlier versions of the pom are stale cache entries.
  find "$TOOLS/flink-job-server" -mindepth 1 -maxdepth 1 ! -name "$(basename "$FLINK_DIR")" \
    -exec rm -rf {} +
  echo "engines: Flink job server assembled in $((SECONDS - start))s"
fi
need java "run Flink"
JAVA_VERSION=$(java -version 2>&1 | head -1)

cat >"$TOOLS/engines.env" <<EOF
BEAM_PRISM_BIN=$PRISM_BIN
BEAM_PRISM_VERSION=v$BEAM_VERSION
BEAM_FLINK_JOB_SERVER_JAR=$FLINK_JAR
BEAM_FLINK_VERSION=$FLINK_VERSION
BEAM_FLINK_RUNNER_VERSION=$FLINK_RUNNER_VERSION
BEAM_FLINK_JOB_SERVICE_VERSION=$JOB_SERVICE_VERSION
BEAM_JAVA_VERSION=$JAVA_VERSION
EOF
echo "engines: wrote $TOOLS/engines.env"
