"""The pure core: domain values and states, the event-to-state table, the normalizer, verify
snapshots, rules and policies (poll, retry, addresses), ids, signing, the error tree.

No I/O and neither aiohttp nor peewee (checked by import-linter): everything above uses it.
"""
