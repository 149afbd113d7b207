"""Quotas in Redis: per-key token buckets (searches, uploads) and a per-key daily budget of tiles
from remote sources. Each check is one Lua script, so concurrent requests in any number of
search-api processes cannot overspend."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis

# KEYS[1] bucket; ARGV rate (tokens/s), burst, cost. Time is Redis's own (one clock for every
# process). Answers {allowed, seconds until the cost is available (a string: Lua numbers
# become integers on the way out)}.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""

# KEYS[1] the day's counter; ARGV tiles wanted, budget. Answers {allowed, used (after, if allowed)}.
DAILY_BUDGET = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local n = tonumber(ARGV[1])
if used + n > tonumber(ARGV[2]) then
  return {0, used}
end
redis.call('INCRBY', KEYS[1], n)
redis.call('EXPIRE', KEYS[1], 172800)
return {1, used + n}
"""


@dataclass
class BucketAnswer:
    allowed: bool
    retry_after_s: float


@dataclass
class BudgetAnswer:
    allowed: bool
    used: int


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


class Quotas:
    """The Redis side of quotas; the client is made on first use (building an app connects to
    nothing)."""

    def __init__(self, redis_url: str, namespace: str):
        self.redis_url = redis_url
        self.namespace = namespace
        self._client: aioredis.Redis | None = None

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self.redis_url)
            self._bucket = self._client.register_script(TOKEN_BUCKET)
            self._budget = self._client.register_script(DAILY_BUDGET)
        return self._client

    async def take(self, kind: str, who: str, rate_per_s: float, burst: int, cost: int = 1) -> BucketAnswer:
        """Take ``cost`` tokens from ``who``'s bucket of ``kind``."""
        _ = self.client
        key = f"{self.namespace}:quota:{kind}:{who}"
        allowed, wait = await self._bucket(keys=[key], args=[rate_per_s, burst, cost])
        return BucketAnswer(bool(allowed), float(wait))

    async def spend_tiles(self, who: str, tiles: int, budget: int) -> BudgetAnswer:
        """Spend ``tiles`` of ``who``'s budget for today (UTC), or nothing when they do not fit."""
        _ = self.client
        allowed, used = await self._budget(keys=[self.tiles_key(who)], args=[tiles, budget])
        return BudgetAnswer(bool(allowed), int(used))

    async def refund_tiles(self, who: str, tiles: int) -> None:
        await self.client.decrby(self.tiles_key(who), tiles)

    async def tiles_used(self, who: str) -> int:
        return int(await self.client.get(self.tiles_key(who)) or 0)

    def tiles_key(self, who: str) -> str:
        return f"{self.namespace}:quota:tiles:{who}:{today()}"

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def retry_after(seconds: float) -> int:
    """Whole seconds for a Retry-After header (at least 1)."""
    return max(1, math.ceil(seconds))


# ----------------------------------------------------------------------------- the tile budget


@dataclass
class TileSpend:
    """Tiles taken from a caller's daily budget, to give back when the work is not done."""

    quotas: Quotas
    who: str
    tiles: int

    async def refund(self) -> None:
        await self.quotas.refund_tiles(self.who, self.tiles)


def seconds_to_midnight() -> int:
    """Whole seconds until the daily budgets start again (midnight UTC; at least 1)."""
    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((tomorrow - now).total_seconds()))
