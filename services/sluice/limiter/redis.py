"""The shared backend: limit state in a Redis-protocol server, one Lua call per decision.

The Lua below mirrors `algorithms.py` operation for operation (the same IEEE doubles in
the same order, so replicas and the in-memory backend agree bit for bit; a test runs
both side by side). Acquire is one EVALSHA: it reads every matching limit, refuses
without writing anything if any limit refuses, otherwise takes the lease asked for (if
any fits), writes them all with an expiry and stores the token reservation. Reconcile
is one EVALSHA too.

States are stored as space-separated `%.17g` numbers (exact round trip of a double).
Reconcile touches keys named inside the reservation rather than in KEYS, which a
single server allows; a Redis Cluster would need hash tags per subject.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sluice.core.clock import Clock
from sluice.core.telemetry.spans import RequestSpans, redis_address
from sluice.limiter.algorithms import Lease, LeaseAsk, Verdict, leased_verdict
from sluice.limiter.backend import Outcome, Reconciled, Spent
from sluice.limiter.policies import Check
from sluice.limiter.settings import RedisSettings

_COMMON = r"""
local INF = math.huge

local function fmt(x) return string.format('%.17g', x) end

local function now_arg(raw)
  if raw ~= '' then return tonumber(raw) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function load(key)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local s = {}
  for word in string.gmatch(raw, '%S+') do s[#s + 1] = tonumber(word) end
  return s
end

local function ttl_ms(algo, p, s, now)
  local seconds
  if algo == 'token_bucket' then
    seconds = p[1] / p[2] + 1
    -- A bucket with permits in pockets must outlive them (a fresh bucket is full).
    if s[3] and s[3] > 0 then seconds = math.max(seconds, s[4] - now + 1) end
  elseif algo == 'sliding_counter' then seconds = 2 * p[2] + 1
  else seconds = p[2] + 1 end
  return math.ceil(seconds * 1000)
end

local function save(key, s, algo, p, now)
  local parts = {}
  for i = 1, #s do parts[i] = fmt(s[i]) end
  redis.call('SET', key, table.concat(parts, ' '), 'PX', ttl_ms(algo, p, s, now))
end

local function window_start(now, w) return math.floor(now / w) * w end

local function whole_ms(ttl)
  local ms = math.floor(ttl * 1000)
  if ms / 1000 > ttl then ms = ms - 1 end
  return ms / 1000
end

-- token bucket: p = {capacity, rate}, s = {tokens, updated, leased, leased_until}
-- (a stored {tokens, updated} reads as nothing leased)
local function tb_refill(p, s, now)
  local cap, rate = p[1], p[2]
  if not s then return {cap, now, 0, 0} end
  local tokens, updated = s[1], s[2]
  local leased, untl = s[3] or 0, s[4] or 0
  if leased > 0 and now >= untl then
    if untl > updated then
      tokens = math.min(cap - leased, tokens + (untl - updated) * rate)
      updated = untl
    end
    leased, untl = 0, 0
  end
  local elapsed = math.max(0, now - updated)
  return {math.min(cap - leased, tokens + elapsed * rate), math.max(updated, now), leased, untl}
end

local function tb_decide(p, s, now, cost)
  local cap, rate = p[1], p[2]
  local new = tb_refill(p, s, now)
  local tokens = new[1]
  if cost > cap then
    return {0, math.max(0, tokens), INF, math.max(0, (cap - tokens) / rate)}, new
  end
  if tokens >= cost then
    tokens = tokens - cost
    new[1] = tokens
    return {1, math.max(0, tokens), 0, (cap - tokens) / rate}, new
  end
  return {0, math.max(0, tokens), (cost - tokens) / rate, (cap - tokens) / rate}, new
end

local function tb_adjust(p, s, now, delta, at)
  local new = tb_refill(p, s, now)
  new[1] = math.min(p[1] - new[3], new[1] - delta)
  return new
end

local function tb_lease_ttl(p, now, ttl) return ttl end

local function tb_lease(p, s, now, n, ttl)
  return {s[1] - n, s[2], s[3] + n, math.max(s[4], now + ttl)}
end

local function window_lease_ttl(p, now, ttl)
  return math.min(ttl, window_start(now, p[2]) + p[2] - now)
end

-- fixed window: p = {limit, window}, s = {start, used}
local function fw_roll(p, s, now)
  local start = window_start(now, p[2])
  if (not s) or s[1] < start then return start, 0 end
  return s[1], s[2]
end

local function fw_decide(p, s, now, cost)
  local limit = p[1]
  local start, used = fw_roll(p, s, now)
  local reset = start + p[2] - now
  if cost > limit then
    return {0, math.max(0, limit - used), INF, math.max(0, reset)}, {start, used}
  end
  if used + cost <= limit then
    used = used + cost
    return {1, math.max(0, limit - used), 0, reset}, {start, used}
  end
  return {0, math.max(0, limit - used), reset, reset}, {start, used}
end

local function fw_adjust(p, s, now, delta, at)
  local start, used = fw_roll(p, s, now)
  if delta > 0 then used = used + delta
  elseif window_start(at, p[2]) == start then used = math.max(0, used + delta) end
  return {start, used}
end

local function fw_lease(p, s, now, n, ttl) return {s[1], s[2] + n} end

-- sliding log: p = {limit, window}, s = {t1, c1, t2, c2, ...}
local function sl_live(p, s, now)
  local live = {}
  if not s then return live end
  local horizon = now - p[2]
  for i = 1, #s, 2 do
    if s[i] > horizon then
      live[#live + 1] = s[i]
      live[#live + 1] = s[i + 1]
    end
  end
  return live
end

local function sl_decide(p, s, now, cost)
  local limit, w = p[1], p[2]
  local live = sl_live(p, s, now)
  local total = 0
  for i = 2, #live, 2 do total = total + live[i] end
  local reset = 0
  if #live > 0 then reset = live[#live - 1] + w - now end
  if cost > limit then
    return {0, math.max(0, limit - total), INF, math.max(0, reset)}, live
  end
  if total + cost <= limit then
    live[#live + 1] = now
    live[#live + 1] = cost
    return {1, math.max(0, limit - (total + cost)), 0, w}, live
  end
  local freed, wait = 0, reset
  for i = 1, #live, 2 do
    freed = freed + live[i + 1]
    local last = (i + 2 > #live) or (live[i + 2] ~= live[i])
    if last and total - freed + cost <= limit then
      wait = live[i] + w - now
      break
    end
  end
  return {0, math.max(0, limit - total), wait, reset}, live
end

local function sl_adjust(p, s, now, delta, at)
  local live = sl_live(p, s, now)
  if delta > 0 then
    live[#live + 1] = now
    live[#live + 1] = delta
  elseif delta < 0 and at > now - p[2] then
    local pos = 1
    while pos <= #live and live[pos] <= at do pos = pos + 2 end
    table.insert(live, pos, delta)
    table.insert(live, pos, at)
  end
  return live
end

local function sl_lease_ttl(p, now, ttl) return 0 end

-- sliding counter: p = {limit, window}, s = {start, current, previous}
local function sc_roll(p, s, now)
  local w = p[2]
  local start = window_start(now, w)
  if not s then return start, 0, 0 end
  if s[1] >= start then return s[1], s[2], s[3] end
  if s[1] == start - w then return start, 0, s[2] end
  return start, 0, 0
end

local function sc_decide(p, s, now, cost)
  local limit, w = p[1], p[2]
  local start, current, previous = sc_roll(p, s, now)
  local weight = 1 - (now - start) / w
  local estimate = previous * weight + current
  local reset = 0
  if current > 0 then reset = start + 2 * w - now
  elseif previous > 0 then reset = start + w - now end
  if cost > limit then
    return {0, math.max(0, limit - estimate), INF, math.max(0, reset)}, {start, current, previous}
  end
  if estimate + cost <= limit then
    current = current + cost
    return {1, math.max(0, limit - (estimate + cost)), 0, reset}, {start, current, previous}
  end
  local at
  if current + cost <= limit then
    at = start + w * (1 - (limit - current - cost) / previous)
  else
    at = start + w + w * (1 - (limit - cost) / current)
  end
  local verdict = {0, math.max(0, limit - estimate), math.max(0, at - now), reset}
  return verdict, {start, current, previous}
end

local function sc_adjust(p, s, now, delta, at)
  local start, current, previous = sc_roll(p, s, now)
  if delta > 0 then current = current + delta
  else
    local reserved_in = window_start(at, p[2])
    if reserved_in == start then current = math.max(0, current + delta)
    elseif reserved_in == start - p[2] then previous = math.max(0, previous + delta) end
  end
  return {start, current, previous}
end

local function sc_lease(p, s, now, n, ttl) return {s[1], s[2] + n, s[3]} end

local DECIDE = {token_bucket = tb_decide, fixed_window = fw_decide,
                sliding_log = sl_decide, sliding_counter = sc_decide}
local ADJUST = {token_bucket = tb_adjust, fixed_window = fw_adjust,
                sliding_log = sl_adjust, sliding_counter = sc_adjust}
local LEASE_TTL = {token_bucket = tb_lease_ttl, fixed_window = window_lease_ttl,
                   sliding_log = sl_lease_ttl, sliding_counter = window_lease_ttl}
local LEASE = {token_bucket = tb_lease, fixed_window = fw_lease, sliding_counter = sc_lease}
"""

# KEYS: one state key per check, then the reservation key.
# ARGV: now ('' = server time), reservation ttl ms, then per check: algorithm, limit,
# rate-or-window, cost, reserve (1 = a token cost to remember); then the lease asked
# for: requests (0 = none), ttl seconds, min headroom (grant_lease in algorithms.py).
# Reply: allowed, now, leased requests, lease ttl, then per check: allowed, remaining,
# retry after, reset after (before the lease; the caller applies leased_verdict).
_ACQUIRE = (
    _COMMON
    + r"""
local now = now_arg(ARGV[1])
local n = #KEYS - 1
local results, states, params = {}, {}, {}
local allowed = 1
for i = 1, n do
  local base = 2 + (i - 1) * 5
  local p = {tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])}
  local verdict, state = DECIDE[ARGV[base + 1]](p, load(KEYS[i]), now, tonumber(ARGV[base + 4]))
  if verdict[1] == 0 then allowed = 0 end
  results[i], states[i], params[i] = verdict, state, p
end
local leased, lease_ttl = 0, 0
local ask = 2 + n * 5
local wanted = tonumber(ARGV[ask + 1])
if allowed == 1 and wanted > 0 then
  local ttl, headroom = tonumber(ARGV[ask + 2]), tonumber(ARGV[ask + 3])
  local requests, shortest = wanted, ttl
  for i = 1, n do
    local algo = ARGV[2 + (i - 1) * 5 + 1]
    requests = math.min(requests, math.floor(results[i][2] - headroom * params[i][1]))
    shortest = math.min(shortest, LEASE_TTL[algo](params[i], now, ttl))
  end
  shortest = whole_ms(shortest)
  if requests >= 1 and shortest > 0 then
    for i = 1, n do
      local algo = ARGV[2 + (i - 1) * 5 + 1]
      states[i] = LEASE[algo](params[i], states[i], now, requests, shortest)
    end
    leased, lease_ttl = requests, shortest
  end
end
local reply = {tostring(allowed), fmt(now), string.format('%d', leased), fmt(lease_ttl)}
for i = 1, n do
  local v = results[i]
  reply[#reply + 1] = tostring(v[1])
  reply[#reply + 1] = fmt(v[2])
  reply[#reply + 1] = fmt(v[3])
  reply[#reply + 1] = fmt(v[4])
end
if allowed == 0 then return reply end
local limits, tokens = {}, 0
for i = 1, n do
  local base = 2 + (i - 1) * 5
  local algo = ARGV[base + 1]
  save(KEYS[i], states[i], algo, params[i], now)
  if ARGV[base + 5] == '1' then
    tokens = tonumber(ARGV[base + 4])
    limits[#limits + 1] = {KEYS[i], algo, ARGV[base + 2], ARGV[base + 3]}
  end
end
if #limits > 0 then
  redis.call('SET', KEYS[n + 1],
    cjson.encode({at = fmt(now), tokens = fmt(tokens), limits = limits}), 'PX', ARGV[2])
end
return reply
"""
)

# KEYS: the reservation key. ARGV: now ('' = server time), actual tokens.
_RECONCILE = (
    _COMMON
    + r"""
local raw = redis.call('GET', KEYS[1])
if not raw then return {'0', '0'} end
redis.call('DEL', KEYS[1])
local now = now_arg(ARGV[1])
local r = cjson.decode(raw)
local reserved = tonumber(r.tokens)
local delta = tonumber(ARGV[2]) - reserved
if delta ~= 0 then
  local at = tonumber(r.at)
  for _, limit in ipairs(r.limits) do
    local key, algo = limit[1], limit[2]
    local p = {tonumber(limit[3]), tonumber(limit[4])}
    save(key, ADJUST[algo](p, load(key), now, delta, at), algo, p, now)
  end
end
return {'1', fmt(reserved)}
"""
)


# Currency spend per key and period: one float per period index, expiring a minute after
# its period ends. KEYS: the key's spend key prefix. ARGV: now ('' = server time), period_s,
# amount (spend only). Replies: {spent, seconds left in the period}.
_SPENT = r"""
local function now_arg(raw)
  if raw ~= '' then return tonumber(raw) end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local now = now_arg(ARGV[1])
local period = tonumber(ARGV[2])
local index = math.floor(now / period)
local key = KEYS[1] .. '|' .. string.format('%d', index)
local left = (index + 1) * period - now
local spent
if ARGV[3] then
  spent = redis.call('INCRBYFLOAT', key, ARGV[3])
  redis.call('PEXPIRE', key, math.ceil((left + 60) * 1000))
else
  spent = redis.call('GET', key) or '0'
end
return {spent, string.format('%.17g', left)}
"""


def _number(text: str) -> float:
    return float(text)  # Lua prints inf as "inf", which float() reads


class RedisBackend:
    """Limit state shared by every replica through one Redis-protocol server."""

    def __init__(
        self,
        settings: RedisSettings,
        *,
        clock: Clock | None = None,
        reservation_ttl_s: float = 3600.0,
        spans: RequestSpans | None = None,
    ) -> None:
        self._spans = spans or RequestSpans(None)
        self._prefix = settings.key_prefix
        # The replica's clock only when asked (tests, or use_server_time off).
        self._clock = None if settings.use_server_time and clock is None else clock
        self._reservation_ttl_ms = str(math.ceil(reservation_ttl_s * 1000))
        self._client = aioredis.Redis.from_url(
            settings.url,
            socket_timeout=settings.timeout_s,
            socket_connect_timeout=settings.timeout_s,
            # Fail over to the local share at once instead of retrying inside a decision.
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._address, self._db = redis_address(self._client)
        self._acquire = self._client.register_script(_ACQUIRE)
        self._reconcile = self._client.register_script(_RECONCILE)
        self._spent = self._client.register_script(_SPENT)

    @property
    def name(self) -> str:
        return "redis"

    def _now(self) -> str:
        return "" if self._clock is None else repr(self._clock.wall())

    async def acquire(
        self, checks: Sequence[Check], reservation_id: str, lease: LeaseAsk | None = None
    ) -> Outcome:
        keys = [self._prefix + check.key for check in checks]
        keys.append(f"{self._prefix}res|{reservation_id}")
        args: list[str] = [self._now(), self._reservation_ttl_ms]
        for check in checks:
            limit, second = check.algorithm.params
            reserve = "1" if check.unit == "tokens" and check.cost > 0 else "0"
            args += [check.algorithm.name, repr(limit), repr(second), repr(check.cost), reserve]
        if lease is None:
            args += ["0", "0", "0"]
        else:
            args += [str(lease.requests), repr(lease.ttl_s), repr(lease.min_headroom)]
        # One EVALSHA per decision, lease included (redis-py falls back to EVAL once if
        # the script is new).
        with self._spans.redis(self._address, "EVALSHA", self._db):
            reply: list[str] = await self._acquire(keys=keys, args=args)
        verdicts = [
            Verdict(
                allowed=reply[i] == "1",
                remaining=_number(reply[i + 1]),
                limit=check.algorithm.limit,
                retry_after_s=_number(reply[i + 2]),
                reset_after_s=_number(reply[i + 3]),
            )
            for check, i in zip(checks, range(4, len(reply), 4), strict=True)
        ]
        leased = int(reply[2])
        if not leased:
            return Outcome(reply[0] == "1", verdicts)
        verdicts = [
            leased_verdict(check.algorithm, verdict, leased)
            for check, verdict in zip(checks, verdicts, strict=True)
        ]
        return Outcome(True, verdicts, lease=Lease(leased, _number(reply[3])))

    async def reconcile(self, reservation_id: str, actual_tokens: float) -> Reconciled:
        with self._spans.redis(self._address, "EVALSHA", self._db):
            reply: list[str] = await self._reconcile(
                keys=[f"{self._prefix}res|{reservation_id}"],
                args=[self._now(), repr(float(actual_tokens))],
            )
        return Reconciled(reply[0] == "1", _number(reply[1]))

    async def spent(self, key: str, period_s: float) -> Spent:
        with self._spans.redis(self._address, "EVALSHA", self._db):
            reply: list[str] = await self._spent(
                keys=[f"{self._prefix}spend|{key}"], args=[self._now(), repr(period_s)]
            )
        return Spent(_number(reply[0]), _number(reply[1]))

    async def spend(self, key: str, period_s: float, amount: float) -> float:
        with self._spans.redis(self._address, "EVALSHA", self._db):
            reply: list[str] = await self._spent(
                keys=[f"{self._prefix}spend|{key}"],
                args=[self._now(), repr(period_s), repr(float(amount))],
            )
        return _number(reply[0])

    async def ping(self) -> bool:
        """Whether the server answers."""
        return bool(await self._client.ping())

    async def close(self) -> None:
        await self._client.aclose()
