"""SDK log ingestion: ``python -m pipelines.sdk_logs --input GLOB --output DIR``.

SDK log data of end users (category ``sdk_log``); a record carrying ``client_ip`` is backend log
data (``backend_log``). Both: legal basis contract, 14 days from ``logged_at``. This is
``python -m pipelines.ingest --source sdk_logs``: the routing, fields and retention are the
policy's (``sources.sdk_logs``), the input contract is ``schemas/avro/sdk_log_input.avsc``.
"""

from __future__ import annotations

import sys

from pipelines.ingest import source_pipeline

__all__ = ["main", "run"]

run, main = source_pipeline("sdk_logs", sys.modules[__name__])

if __name__ == "__main__":
    main()
