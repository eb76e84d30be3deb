"""Attesto webhooks after the signature check: the write unit that stores a delivery once and
applies it (inbox row, purchase, events, outbox rows in one transaction), and the ingest
writer process with its wire and link for `[server] ingest_writer`."""
