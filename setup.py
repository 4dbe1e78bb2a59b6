"""One installable distribution: the packages pipelines, transforms and schemas, with their data.

Remote Beam workers (Dataflow, Flink) install this same package (``--setup_file ./setup.py``), so
everything the transforms import at run time is a dependency here, and every data file they read
(policy, Avro schemas, bundled country database and sample) is package data.
"""

from setuptools import find_packages, setup

# Pinned to one exact release so that the job graph, the runner behaviour we rely on (the
# FnApiRunner's fusion and Flatten, measured in bench/RESULTS.md) and the engines we test against
# (Prism built from the Go module of the same version, the Flink job server jar, the Dataflow SDK
# container image) all agree. 2.77.0 is the newest release with CPython 3.11 wheels; moving it is a
# deliberate change together with deploy/ and the engine tests.
BEAM = "apache-beam==2.77.0"

setup(
    name="trtc-privacy-ingestion",
    version="0.1.0",
    description="Privacy-compliant ingestion on Apache Beam: the TRTC privacy policy made true in "
    "the data.",
    python_requires=">=3.11",
    packages=find_packages(
        include=["pipelines", "pipelines.*", "transforms", "transforms.*", "schemas", "schemas.*"]
    ),
    package_data={
        "schemas": ["policy.yaml", "avro/*.avsc"],
        "pipelines": ["data/*.mmdb", "data/*.md", "data/sample/*"],
    },
    include_package_data=False,
    install_requires=[
        BEAM,
        "fastavro>=1.9",
        # The design's country-lookup library. The pipelines read its databases through
        # maxminddb, the C reader geoip2 is built on (a geoip2 model per lookup cost several
        # times the lookup: transforms/geo.py); tests/transforms/test_geo.py holds every answer
        # to geoip2's.
        "geoip2>=4.8",
        "maxminddb>=2.5",
        # JSON Lines decoding is the parser's largest cost: orjson is ~4x faster than json.
        "orjson>=3.9",
        "phonenumbers>=8.13",
        "pyarrow>=14",
        "pyyaml>=6",
        # The AroundDeal HTTP client (transforms/enrichment/http_resilience.py): connection
        # pools and Retry with backoff_jitter and backoff_max, both new in urllib3 2.
        "urllib3>=2,<3",
        "certifi>=2023.7.22",  # the CA bundle the HTTP client verifies TLS with
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "mmdb-writer>=0.2.5",
            "netaddr>=1.2",
            "ruff==0.17.6",  # exact: the formatter's output is checked in CI
            "psutil>=5.9",
            # tests/pipelines/test_readers.py opens real outputs with the readers users have, each
            # with its defaults (pyarrow is a dependency already). Spark 4 runs on Java 17.
            "duckdb>=1.1",
            "polars>=1.0",
            "pyspark>=4.0,<5",
            # The Dataflow dry run of tests/engines builds each job graph with the DataflowRunner.
            BEAM.replace("apache-beam", "apache-beam[gcp]"),
        ],
        "gcp": [BEAM.replace("apache-beam", "apache-beam[gcp]")],
        "bench": ["psutil>=5.9"],
    },
)
