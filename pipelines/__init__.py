"""The jobs of the project, each a command line: ``python -m pipelines[.<job>]``.

Apache Beam logs warnings as it is imported (e.g. a filesystem whose extra is not installed,
``Failed to import GCSFileSystem``), before any command line is read, and none a user of these
jobs can act on. So its loggers start at ERROR here, before any module of the package imports
Beam; ``--log_level`` (``pipelines.launch.configure_logging``) sets them for the rest of the run.
"""

import logging

logging.getLogger("apache_beam").setLevel(logging.ERROR)
