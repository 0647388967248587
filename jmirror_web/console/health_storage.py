"""The health page's evidence store section: where evidence goes (the storage URL and the
endpoint, never a credential), whether the bucket has Object Lock and versioning, and the
retention mode; without Object Lock a warning that evidence in the store is deletable; a
store out of reach an error line.

The bucket is asked at most once a minute
(:func:`jmirror_web.intercepts.object_retention.bucket_facts`) with a short timeout, so
reloading the page never hammers the store, nor hangs on one that is down.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from jmirror_web.intercepts.object_retention import (
    BUCKET_CHECK_TTL,
    bucket_facts,
    configured_store,
)
from jmirror_web.object_store import BucketFacts, StorageConfig


@dataclass(frozen=True)
class EvidenceStoreStatus:
    """What the section shows; ``facts`` is None when the store could not be reached
    (``error`` says why, in one line)."""

    url: str
    endpoint: str
    lock_mode: str
    facts: BucketFacts | None
    error: str
    checked_every: int

    @property
    def deletable(self) -> bool:
        """Reached, and without Object Lock: anyone with the credentials can delete."""
        return self.facts is not None and not self.facts.object_lock


def evidence_store_status() -> EvidenceStoreStatus | None:
    """The configured store's status, or None for local files only."""
    config: StorageConfig | None = settings.STORAGE
    store = configured_store()
    if config is None or store is None:
        return None
    facts, error = bucket_facts(store)
    return EvidenceStoreStatus(
        url=config.url,
        endpoint=config.endpoint or "AWS S3",
        lock_mode=str(config.lock_mode),
        facts=facts,
        error=error,
        checked_every=int(BUCKET_CHECK_TTL),
    )
