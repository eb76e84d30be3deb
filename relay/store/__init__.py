"""The database: one thread owns the connection; models and migrations; the prebuilt SQL of
the hot path; the pipeline that applies a snapshot (row, events, outbox rows) in the
caller's transaction; lookups, leases, backup and housekeeping."""
