"""Flex template entry point of the visits pipeline (``FLEX_TEMPLATE_PYTHON_PY_FILE``).

The template launcher runs ``python main.py --input=... --output=... <Dataflow options>`` with
``--template_location`` set: the DataflowRunner then writes the job description for the launcher
to submit instead of running it. ``pipelines.launch.run_and_report`` recognises that launch
(nothing to wait for, no counters to read: the Dataflow job's metrics, namespace ``compliance``,
are its report), so this is exactly ``python -m pipelines.visits``: the same graph and labels
(jobs stay update-compatible), and anywhere else (``--runner=DirectRunner`` to test the image, a
plain ``DataflowRunner`` submission) the ordinary command line, which waits and writes the report.
"""

from __future__ import annotations

from pipelines.visits import main

if __name__ == "__main__":
    main()
