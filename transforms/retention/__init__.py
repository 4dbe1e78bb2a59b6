"""Retention that happens: the building blocks of ``pipelines.purge``, ``.lifecycle``, ``.erase``.

- :mod:`~transforms.retention.layout`: which files of an output root are partitions of what, and
  whether a directory is an output root at all (everything goes through Beam's ``FileSystems``,
  so ``gs://`` and ``s3://`` roots work like local ones);
- :mod:`~transforms.retention.files`: reading and rewriting one file of the layout with its own
  schema and codec (Parquet, Avro, JSON Lines dead letters);
- :mod:`~transforms.retention.txn`: the write-ahead journal that makes a rewrite of many files
  crash-safe (stage, commit, apply, recover) and its fail points;
- :mod:`~transforms.retention.lock`: one retention job per output root at a time;
- :mod:`~transforms.retention.jsonio`: the journal's, lock's and audits' JSON records, and
  deletes that take paths literally;
- :mod:`~transforms.retention.matching`: normalisation of identifiers, e-mails, phone numbers,
  LinkedIn URLs and IPs (one rule for requests and stored columns alike), and the vectorised
  matching of a file's columns against a set of values;
- :mod:`~transforms.retention.lifecycle`: lifecycle events, their cascades, the new
  ``expires_at`` of the rows they end, and the Beam transforms that move rows out of the
  open-ended partition;
- :mod:`~transforms.retention.erasure`: erasure requests, their data subjects and the Beam
  transforms that remove (and then look for) every row of a subject.
"""
