"""Dashboard telemetry ingestion: ``python -m pipelines.telemetry --input GLOB --output DIR``.

Quality reports (``event_type: quality``) are troubleshooting data; the end users' function events
(enter/leave room, enable/disable audio and video, mute/unmute) are dashboard information. Both:
legal basis contract, 14 days from ``reported_at``. This is ``python -m pipelines.ingest --source
telemetry``: routing, fields and retention are the policy's (``sources.telemetry``), the input
contract is ``schemas/avro/telemetry_input.avsc``.
"""

from __future__ import annotations

import sys

from pipelines.ingest import source_pipeline

__all__ = ["main", "run"]

run, main = source_pipeline("telemetry", sys.modules[__name__])

if __name__ == "__main__":
    main()
