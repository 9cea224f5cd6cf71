-- Reserve an amount on every budget line if it fits under each capped one; all or nothing.
-- KEYS, three per line: spent (STRING, micro-dollars), amounts (HASH reservation id -> amount),
-- expiries (ZSET reservation id -> expires_at).
-- ARGV[3]: reservation id, ARGV[4]: amount, ARGV[5]: ttl_s, ARGV[6]: seconds a line's keys are kept
-- after its period resets; then per line: limit (0 = no cap), resets_at.
-- Returns {1} or {0, refusing line (1-based), spent, reserved by others}.
local now = clock()
local id, amount, ttl, keep = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local n = #KEYS / 3

for i = 1, n do
  local spent_key, amounts, expiries = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  -- Reservations left by a crashed process stop counting at their expiry.
  local stale = redis.call('ZRANGEBYSCORE', expiries, '-inf', num(now))
  for _, gone in ipairs(stale) do
    redis.call('HDEL', amounts, gone)
  end
  redis.call('ZREMRANGEBYSCORE', expiries, '-inf', num(now))

  local limit = tonumber(ARGV[5 + 2 * i])
  if limit > 0 then
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

for i = 1, n do
  local amounts, expiries = KEYS[3 * i - 1], KEYS[3 * i]
  local resets_at = tonumber(ARGV[6 + 2 * i])
  redis.call('HSET', amounts, id, ARGV[4])
  redis.call('ZADD', expiries, num(now + ttl), id)
  local keep_for = math.max(resets_at - now + keep, ttl)
  expire_in(amounts, keep_for)
  expire_in(expiries, keep_for)
end
return {1}
