-- Prepended (after _common.lua) to the scripts that claim, rate-limit, reserve and settle a
-- request, so that `admit` can do in one atomic step what claim_request, take_tokens and reserve
-- do one at a time, with the very same code. Functions only: each reads its keys and arguments
-- from the tables and offsets it is given, never from fixed positions.

-- The live claim or result on a request, as the caller's reply ({'done', result},
-- {'in_flight'} or {'interrupted'}), or nil when the request may be claimed. `key`: the request
-- HASH {state = claimed|done, result, expires_at, owner, reaped}. An owned claim (admitted with
-- an owner) that expired unsettled holds its ID as interrupted, before and after it is reaped.
local function held_request(key, now)
  local held = redis.call('HMGET', key, 'state', 'result', 'expires_at', 'owner', 'reaped')
  local expires_at = tonumber(held[3])
  if not held[1] or not expires_at then
    return nil
  end
  if held[5] == '1' then
    if now < expires_at then
      return {'interrupted'}
    end
    return nil
  end
  if now < expires_at then
    if held[1] == 'done' then
      return {'done', held[2]}
    end
    return {'in_flight'}
  end
  if held[1] == 'claimed' and held[4] then
    return {'interrupted'}
  end
  return nil
end

-- A request ID is used once: its ledger entry (`ledger_key`, HASH, kept for good) holds it after
-- its result and its interrupted mark are forgotten, as the caller's reply: {'interrupted'} while
-- the entry is an unsettled charge, else {'done', nil} (no result to replay); nil when the ledger
-- has no entry for it. Run again, the call could not be recorded: the settle would find the entry
-- and write nothing, or replace the unsettled charge. With `unsettled_only` (a cache hit, which
-- costs nothing and is then simply not recorded again) only an unsettled charge holds the ID.
local function ledger_holds(ledger_key, unsettled_only)
  if redis.call('EXISTS', ledger_key) == 0 then
    return nil
  end
  if redis.call('HGET', ledger_key, 'unsettled') == '1' then
    return {'interrupted'}
  end
  if unsettled_only then
    return nil
  end
  return {'done', false}
end

-- `owner` ('' = none): the JSON the reaper needs to charge the claim if it is never settled; an
-- owned claim outlives its ttl by `keep` seconds so the reaper can find it.
local function write_claim(key, now, ttl, owner, keep)
  redis.call('DEL', key)
  redis.call('HSET', key, 'state', 'claimed', 'expires_at', num(now + ttl))
  if owner and owner ~= '' then
    redis.call('HSET', key, 'owner', owner)
    expire_in(key, ttl + keep)
  else
    expire_in(key, ttl)
  end
end

local function write_result(key, now, result, ttl)
  redis.call('HDEL', key, 'owner', 'reaped')
  redis.call('HSET', key, 'state', 'done', 'result', result, 'expires_at', num(now + ttl))
  expire_in(key, ttl)
end

-- Add one ledger entry's metrics to the day's aggregates: `day_key` (workspace, fields
-- 't:<metric>', 'u:<metric>:<user>', 'm:<metric>:<model>', 's:<metric>:<source>') and
-- `user_day_key` ('<metric>:<model>', 's:<metric>:<source>'). The source '' (the front end's own
-- calls, and every entry from before sources) gets no fields: it is the total less the others.
-- argv[at ..] holds `n` metric name/value pairs; `sign` is 1 or -1 (taking an entry back out).
local function add_usage(day_key, user_day_key, user, model, source, argv, at, n, sign)
  for i = 0, n - 1 do
    local metric, value = argv[at + 2 * i], tonumber(argv[at + 2 * i + 1])
    if value ~= 0 then
      value = string.format('%d', sign * value)
      redis.call('HINCRBY', day_key, 't:' .. metric, value)
      redis.call('HINCRBY', day_key, 'u:' .. metric .. ':' .. user, value)
      redis.call('HINCRBY', day_key, 'm:' .. metric .. ':' .. model, value)
      redis.call('HINCRBY', user_day_key, metric .. ':' .. model, value)
      if source ~= '' then
        redis.call('HINCRBY', day_key, 's:' .. metric .. ':' .. source, value)
        redis.call('HINCRBY', user_day_key, 's:' .. metric .. ':' .. source, value)
      end
    end
  end
end

-- Token buckets, all or nothing: the arithmetic of proxy_core/limiter.py::take. keys[first ..
-- first + n - 1] are the buckets (HASH {tokens, updated}); argv[at + 3(i-1) ..] holds rate, burst
-- and cost of bucket i. Returns the decision; nothing is written until write_buckets.
local function take_buckets(keys, first, n, argv, at, now)
  local t = {keys = {}, rate = {}, burst = {}, cost = {}, tokens = {}, updated = {}, retry_after = 0,
             blocking = -1, debits = false}
  for i = 1, n do
    local a = at + (i - 1) * 3
    t.keys[i] = keys[first + i - 1]
    t.rate[i], t.burst[i], t.cost[i] = tonumber(argv[a]), tonumber(argv[a + 1]), tonumber(argv[a + 2])
    local state = redis.call('HMGET', t.keys[i], 'tokens', 'updated')
    local tokens, updated = tonumber(state[1]), tonumber(state[2])
    if tokens == nil or updated == nil then
      -- Never seen (or forgotten once full again): a full bucket.
      t.tokens[i], t.updated[i] = t.burst[i], now
    else
      t.tokens[i] = math.min(t.burst[i], tokens + math.max(0, now - updated) * t.rate[i])
      t.updated[i] = math.max(now, updated)
    end
  end
  -- A cost above capacity is capped at capacity, so such a request can pass once the bucket is full.
  for i = 1, n do
    local need = math.min(t.cost[i], t.burst[i])
    if t.tokens[i] < need then
      local wait = math.huge
      if t.rate[i] > 0 then
        -- Rounded up to a whole millisecond, as limiter.py's _whole_ms.
        wait = math.ceil((need - t.tokens[i]) / t.rate[i] * 1000 - 1e-6) / 1000
      end
      if wait > t.retry_after then
        t.retry_after, t.blocking = wait, i - 1
      end
    end
  end
  if t.blocking < 0 then
    for i = 1, n do
      t.tokens[i] = t.tokens[i] - math.min(t.cost[i], t.burst[i])
      if t.cost[i] > 0 then
        t.debits = true
      end
    end
  end
  return t
end

-- A bucket's state is kept at least this long. Once full again a bucket equals a missing one, but
-- "full again" is reckoned at the rate it was written under: lowered meanwhile (a new setting, a
-- key's own narrower limit), the bucket refills slower, and one forgotten on the old schedule would
-- hand out a whole burst early. SQLite keeps every bucket; a day's worth of small hashes is enough.
local BUCKET_KEEP_S = 86400

-- Write an allowing decision. A refusal or a pure peek debits nothing, so it writes nothing.
local function write_buckets(t)
  if t.blocking >= 0 or not t.debits then
    return
  end
  for i = 1, #t.keys do
    redis.call('HSET', t.keys[i], 'tokens', num(t.tokens[i]), 'updated', num(t.updated[i]))
    if t.rate[i] > 0 then
      expire_in(t.keys[i], math.max((t.burst[i] - t.tokens[i]) / t.rate[i], BUCKET_KEEP_S))
    else
      redis.call('PERSIST', t.keys[i])
    end
  end
end

-- {allowed (1/0), retry_after, blocking (0-based; -1 = none), remaining_1, ..., remaining_n}
local function bucket_reply(t)
  local reply = {t.blocking < 0 and 1 or 0, num(t.retry_after), t.blocking}
  for i = 1, #t.keys do
    reply[#reply + 1] = num(t.tokens[i])
  end
  return reply
end

-- Budget lines: keys[first ..], three per line: spent (STRING, micro-dollars), amounts (HASH
-- reservation id -> amount), expiries (ZSET reservation id -> expires_at); argv[at + 2(i-1) ..]
-- holds the line's limit (0 = no cap) and resets_at. Purges reservations left by crashed
-- processes, then returns nil if `amount` fits under every capped line, else {0, refusing line
-- (1-based), spent, reserved by others}.
local function check_budget(keys, first, n, argv, at, id, amount, now)
  for i = 1, n do
    local k = first + 3 * (i - 1)
    local spent_key, amounts, expiries = keys[k], keys[k + 1], keys[k + 2]
    local stale = redis.call('ZRANGEBYSCORE', expiries, '-inf', num(now))
    for _, gone in ipairs(stale) do
      redis.call('HDEL', amounts, gone)
    end
    redis.call('ZREMRANGEBYSCORE', expiries, '-inf', num(now))

    local limit = tonumber(argv[at + 2 * (i - 1)])
    -- Nothing more (amount 0: a model priced at $0) fits even a line over its cap (budget.fits).
    if limit > 0 and amount > 0 then
      local spent = tonumber(redis.call('GET', spent_key)) or 0
      local reserved = 0
      for _, held in ipairs(redis.call('HVALS', amounts)) do
        reserved = reserved + tonumber(held)
      end
      -- A retried reservation replaces itself rather than counting twice.
      reserved = reserved - (tonumber(redis.call('HGET', amounts, id)) or 0)
      if spent + reserved + amount > limit then
        return {0, i, spent, reserved}
      end
    end
  end
  return nil
end

-- Record the reservation on every line; `keep`: seconds a line's keys outlive its reset.
local function write_reservation(keys, first, n, argv, at, id, amount_text, ttl, keep, now)
  for i = 1, n do
    local k = first + 3 * (i - 1)
    local amounts, expiries = keys[k + 1], keys[k + 2]
    local resets_at = tonumber(argv[at + 2 * (i - 1) + 1])
    redis.call('HSET', amounts, id, amount_text)
    redis.call('ZADD', expiries, num(now + ttl), id)
    local keep_for = math.max(resets_at - now + keep, ttl)
    expire_in(amounts, keep_for)
    expire_in(expiries, keep_for)
  end
end
