"""Peewee models: the tables and their indexes. Only `store` and `migrations` use them.

Times are integer milliseconds since the epoch (`*_ms`): portable across SQLite and
PostgreSQL, cheap to compare, and free of time-zone ambiguity.
"""

from __future__ import annotations

from peewee import (
    SQL,
    AutoField,
    BigIntegerField,
    BlobField,
    BooleanField,
    CharField,
    CompositeKey,
    DatabaseProxy,
    ForeignKeyField,
    IntegerField,
    Model,
    TextField,
)

database = DatabaseProxy()

# Bumped with every migration in relay/store/migrations.py; serve refuses a newer database.
SCHEMA_VERSION = 11


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


class Meta(BaseModel):
    """Small key/value table: schema version and other singletons."""

    key = CharField(primary_key=True, max_length=64)
    value = TextField()


class Purchase(BaseModel):
    """One row per (platform, subject_key): the current normalized view of a purchase."""

    platform = CharField(max_length=16)
    subject_key = CharField(max_length=4096)
    kind = CharField(max_length=16, default="subscription")  # subscription | product
    user_id = CharField(max_length=256, null=True, index=True)
    app_user_id = CharField(max_length=64, null=True, index=True)
    product_id = CharField(max_length=256, null=True)
    base_plan_id = CharField(max_length=256, null=True)
    state = CharField(max_length=32)
    state_reason = CharField(max_length=64, null=True)
    environment = CharField(max_length=16, null=True)
    expires_ms = BigIntegerField(null=True)
    auto_renew = BooleanField(null=True)
    latest_ref = CharField(max_length=4096, null=True)  # Apple transactionId / Google token
    package_name = CharField(max_length=256, null=True)
    store_time_ms = BigIntegerField(default=0)  # the store's own time of the applied state
    sequence = IntegerField(default=0)  # last event sequence for this subject
    created_ms = BigIntegerField()
    updated_ms = BigIntegerField()
    next_poll_ms = BigIntegerField(null=True, index=True)
    poll_failures = IntegerField(default=0)
    # A Google webhook announced a new period (renewed, recovered) whose expiry
    # relay has not read yet: the re-verify that reads it does not announce it again.
    period_pending = BooleanField(default=False, constraints=[SQL("DEFAULT FALSE")])
    grace_expires_ms = BigIntegerField(null=True)  # Apple gracePeriodExpiresDate
    period_start_ms = BigIntegerField(null=True)  # Apple purchaseDate of latest_ref
    voided_ms = BigIntegerField(null=True)  # Google: a void awaits its re-fetch

    class Meta:
        primary_key = CompositeKey("platform", "subject_key")


class Inbox(BaseModel):
    """Every accepted Attesto delivery, exact bytes, unique on eventId."""

    event_id = CharField(primary_key=True, max_length=64)
    event_type = CharField(max_length=96)
    received_ms = BigIntegerField(index=True)
    signature_t = BigIntegerField()
    headers = TextField()  # JSON of the headers of interest (never the signature)
    body = BlobField()


class InputLog(BaseModel):
    """Every input that touched a purchase, oldest first per purchase (`id` is the cursor).

    Written in the transaction of its effect. A webhook's raw bytes stay in its inbox row
    (`inbox_event_id`); a verify or poll answer keeps its JSON in `body`. A poll answer
    identical to the purchase's previous one is counted (`repeats`, `last_ms`), not copied.
    """

    id = AutoField()
    platform = CharField(max_length=16)
    subject_key = CharField(max_length=4096)
    # webhook | verify | restore | poll | admin | reprojection | baseline (the row as it
    # stood when the log began, migration 8)
    source = CharField(max_length=16)
    received_ms = BigIntegerField()
    observed_ms = BigIntegerField()  # the store's own time of the information
    store_type = CharField(max_length=64, null=True)  # notificationType / code / state
    store_subtype = CharField(max_length=64, null=True)
    event_type = CharField(max_length=96, null=True)  # Attesto's event name, if any
    ref = CharField(max_length=4096, null=True)  # transaction id / order id / token
    transaction_id = CharField(max_length=128, null=True)  # the ledger row it names, if any
    expires_ms = BigIntegerField(null=True)
    state_before = CharField(max_length=32, null=True)
    state_after = CharField(max_length=32, null=True)
    event_ids = TextField(null=True)  # the relayed events, comma-separated
    inbox_event_id = CharField(max_length=64, null=True)  # webhook: its raw bytes
    user_id = CharField(max_length=256, null=True)  # verify/restore: the caller's user
    body = TextField(null=True)  # verify/poll answer (JSON); baseline: the row
    repeats = IntegerField(default=1)
    last_ms = BigIntegerField(null=True)  # received_ms of the last repeat

    class Meta:
        table_name = "input_log"
        indexes = (
            (("platform", "subject_key", "id"), False),
            (("received_ms",), False),
        )
        # and input_log_user (user_id) WHERE user_id IS NOT NULL (migration 9): the
        # purchases a user verified, for explain and the user's purchases


class Ledger(BaseModel):
    """The transaction ledger: one row per paid store transaction (Apple transactionId,
    Google order id), keyed on (platform, transaction_id); the columns are
    `relay.core.ledger.LedgerEntry`'s. `cursor` (unique) moves to the end when the row
    changes in a way a consumer must see again; `GET /v1/transactions` pages on it."""

    cursor = BigIntegerField(unique=True)
    platform = CharField(max_length=16)
    transaction_id = CharField(max_length=128)
    subject_key = CharField(max_length=4096)
    user_id = CharField(max_length=256, null=True)
    product_id = CharField(max_length=256, null=True)
    environment = CharField(max_length=16, null=True)
    ownership = CharField(max_length=16, null=True)  # Apple: purchased | family_shared
    period_start_ms = BigIntegerField(null=True)
    period_end_ms = BigIntegerField(null=True)
    price_micros = BigIntegerField(null=True)
    currency = CharField(max_length=8, null=True)
    refunded_ms = BigIntegerField(null=True)
    revoked_ms = BigIntegerField(null=True)
    observed_ms = BigIntegerField()  # store time of the newest input that spoke of a refund
    created_ms = BigIntegerField()
    updated_ms = BigIntegerField()
    version = IntegerField()  # transaction.* events relayed so far (their sequence)
    change = CharField(max_length=16)  # recorded | refunded | revoked | ... (core.ledger)

    class Meta:
        table_name = "ledger"
        primary_key = CompositeKey("platform", "transaction_id")
        indexes = (
            (("platform", "subject_key"), False),
            (("user_id", "cursor"), False),
        )


class Event(BaseModel):
    """A normalized event; `cursor` is commit order, `id` the id downstream dedupes on."""

    cursor = AutoField()
    id = CharField(unique=True, max_length=40)
    type = CharField(max_length=96)
    source = CharField(max_length=16)  # webhook | verify | restore | poll
    platform = CharField(max_length=16, null=True)
    subject_key = CharField(max_length=4096, null=True)
    sequence = IntegerField(null=True)
    user_id = CharField(max_length=256, null=True)
    occurred_ms = BigIntegerField()
    received_ms = BigIntegerField(index=True)
    attesto_event_id = CharField(max_length=64, null=True)  # no index: nothing reads by it
    stale = BooleanField(default=False)
    body = TextField()  # the exact JSON relayed, same bytes on every attempt


class Delivery(BaseModel):
    """Outbox: one row per (event, endpoint)."""

    id = AutoField()
    # No index of its own: (event_cursor, endpoint), unique, serves it (migration 11).
    event = ForeignKeyField(Event, field=Event.cursor, column_name="event_cursor",
                            on_delete="CASCADE", index=False)
    endpoint = CharField(max_length=64)
    subject = CharField(max_length=4200)  # platform:subject_key, or the event id if none
    sequence = IntegerField(default=0)
    # pending | held | delivered | dead | unrouted (waits for the purchase's environment)
    status = CharField(max_length=16)
    attempts = IntegerField(default=0)
    next_attempt_ms = BigIntegerField()
    claimed_until_ms = BigIntegerField(null=True)
    last_status = IntegerField(null=True)
    last_error = TextField(null=True)
    created_ms = BigIntegerField()
    delivered_ms = BigIntegerField(null=True)

    class Meta:
        indexes = (
            (("event", "endpoint"), True),
            (("status", "next_attempt_ms"), False),
            (("endpoint", "subject", "sequence"), False),
        )


class Attempt(BaseModel):
    """One HTTP attempt of a delivery."""

    id = AutoField()
    delivery = ForeignKeyField(Delivery, on_delete="CASCADE", index=True)
    started_ms = BigIntegerField()
    duration_ms = IntegerField()
    status_code = IntegerField(null=True)
    error = TextField(null=True)
    response_excerpt = TextField(null=True)


class AppUser(BaseModel):
    """The appUserId (UUID v4) minted once per user; Attesto reports it back."""

    user_id = CharField(primary_key=True, max_length=256)
    app_user_id = CharField(unique=True, max_length=64)
    created_ms = BigIntegerField()


class Lease(BaseModel):
    """A named lease so one instance runs a job at a time."""

    name = CharField(primary_key=True, max_length=64)
    owner = CharField(max_length=128)
    expires_ms = BigIntegerField()


class EndpointState(BaseModel):
    """A downstream endpoint paused by an admin or disabled by a 410; survives restarts."""

    name = CharField(primary_key=True, max_length=64)
    reason = CharField(max_length=32)  # paused (admin) | gone (the endpoint answered 410)
    detail = TextField(null=True)
    since_ms = BigIntegerField()


class EndpointHealth(BaseModel):
    """Each endpoint's last delivered and last failed attempt, kept by `outbox_db.record`."""

    name = CharField(primary_key=True, max_length=64)
    last_success_ms = BigIntegerField(null=True)
    last_error_ms = BigIntegerField(null=True)
    last_error_status = IntegerField(null=True)  # None: no HTTP answer (timeout, refused)
    last_error = TextField(null=True)


class DeliveryMinute(BaseModel):
    """Delivery attempts per minute (of their start) and endpoint, counted by
    `outbox_db.record` in the transaction that stores them: the console's plots read a
    few hundred rows instead of every attempt. Pruned with delivered rows."""

    minute_ms = BigIntegerField()
    endpoint = CharField(max_length=64)
    delivered = IntegerField(default=0)
    failed = IntegerField(default=0)

    class Meta:
        primary_key = CompositeKey("minute_ms", "endpoint")


class ConsoleSession(BaseModel):
    """A console sign-in. `key` is HMAC-SHA256(credential, the cookie's token): the cookie
    alone is useless without the credential, and rotating the credential ends the session."""

    key = CharField(primary_key=True, max_length=64)
    credential = CharField(max_length=32)  # admin-token | console-password
    client = CharField(max_length=128)
    created_ms = BigIntegerField()
    expires_ms = BigIntegerField()


class ConsoleThrottle(BaseModel):
    """Failed console sign-ins per client address (and `*` for all) in a fixed window."""

    client = CharField(primary_key=True, max_length=128)
    window_start_ms = BigIntegerField()
    failures = IntegerField()


MODELS: tuple[type[BaseModel], ...] = (
    Meta, Purchase, Inbox, Event, Delivery, Attempt, AppUser, Lease, EndpointState, InputLog,
    EndpointHealth, DeliveryMinute, ConsoleSession, ConsoleThrottle, Ledger,
)
