"""Database leases: one instance at a time runs a named job (portable SQL, no advisory locks)."""

from __future__ import annotations

from peewee import IntegrityError

from relay.store.models import Lease


def take_lease(name: str, owner: str, ttl_ms: int, now_ms: int) -> bool:
    """Take or renew `name` for `owner` until now+ttl; False if another owner holds it.

    Runs inside the caller's transaction (store thread)."""
    until = now_ms + ttl_ms
    updated = (Lease.update(owner=owner, expires_ms=until)
               .where((Lease.name == name)
                      & ((Lease.owner == owner) | (Lease.expires_ms < now_ms)))
               .execute())
    if updated:
        return True
    if Lease.select().where(Lease.name == name).exists():
        return False
    try:
        with Lease._meta.database.atomic():
            Lease.insert(name=name, owner=owner, expires_ms=until).execute()
    except IntegrityError:  # another instance inserted it first
        return False
    return True


def release_lease(name: str, owner: str) -> None:
    Lease.delete().where((Lease.name == name) & (Lease.owner == owner)).execute()
