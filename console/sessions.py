"""Sessions read from the cache and written through to the database, that keep working when the
cache (Redis/Valkey) is down: a failed cache call is a miss, and the database answers.

Django's own cached_db store guards its cache reads and writes only partly: during a broker outage
every signed-in page answered 500."""

import logging

from django.conf import settings
from django.contrib.sessions.backends.cached_db import SessionStore as CachedDBStore
from django.core.cache import caches

logger = logging.getLogger(__name__)


class _Forgiving:
    """The session cache, minus its outages: reads miss, writes and deletes are skipped."""

    def __init__(self, cache) -> None:
        self._cache = cache

    def _failed(self, call: str, exc: Exception) -> None:
        logger.warning("session cache unavailable (%s: %s): using the database", call, exc.__class__.__name__)

    def get(self, key, default=None):
        try:
            return self._cache.get(key, default)
        except Exception as exc:
            self._failed("get", exc)
            return default

    async def aget(self, key, default=None):
        try:
            return await self._cache.aget(key, default)
        except Exception as exc:
            self._failed("get", exc)
            return default

    def set(self, key, value, timeout=None) -> None:
        try:
            self._cache.set(key, value, timeout)
        except Exception as exc:
            self._failed("set", exc)

    async def aset(self, key, value, timeout=None) -> None:
        try:
            await self._cache.aset(key, value, timeout)
        except Exception as exc:
            self._failed("set", exc)

    def delete(self, key) -> None:
        try:
            self._cache.delete(key)
        except Exception as exc:
            self._failed("delete", exc)

    async def adelete(self, key) -> None:
        try:
            await self._cache.adelete(key)
        except Exception as exc:
            self._failed("delete", exc)

    def __contains__(self, key) -> bool:
        return self.get(key) is not None


class SessionStore(CachedDBStore):
    def __init__(self, session_key=None) -> None:
        super().__init__(session_key)
        self._cache = _Forgiving(caches[settings.SESSION_CACHE_ALIAS])
