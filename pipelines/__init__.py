"""The jobs of the project, each a command line: ``python -m pipelines[.<job>]``.

Apache Beam logs warnings as it is imported (e.g. a filesystem whose extra is not installed,
``Failed to import GCSFileSystem``), before any command line is read, and none a user of these
jobs can act on. So its loggers start at ERROR here, before any module of the package imports
Beam; ``--log_level`` (``pipelines.launch.configure_logging``) sets them for the rest of the run.

One of those warnings is logged on the *root* logger, not Beam's: without the ``gcp`` extra,
``import apache_beam`` says "apitools not found, and bigquery client libraries are not available"
(``apache_beam/io/gcp/internal/clients/bigquery/__init__.py``). No job here uses BigQuery, so a
filter on the root logger drops exactly that message, and nothing else.
"""

import logging

_BEAM_IMPORT_NOISE = "apitools not found, and bigquery client libraries are not available"


def _not_beam_import_noise(record: logging.LogRecord) -> bool:
    return not (
        record.levelno == logging.WARNING and record.getMessage().startswith(_BEAM_IMPORT_NOISE)
    )


logging.getLogger("apache_beam").setLevel(logging.ERROR)
logging.getLogger().addFilter(_not_beam_import_noise)
