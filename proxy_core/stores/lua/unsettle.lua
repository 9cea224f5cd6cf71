-- Charge one interrupted call: an owned claim (admit.lua) that expired neither settled nor
-- released becomes an unsettled ledger entry at its reserved amount, added to every budget line
-- (capped or not) and to the day's aggregates; its reservation is dropped and its request ID is
-- kept as reaped (interrupted) for a while. Anything else (settled, released, already reaped,
-- still live) is only taken off the owned-claims index, unless still live.
-- KEYS[1]: the request HASH, KEYS[2]: the workspace's owned claims (ZSET), KEYS[3]: the ledger
-- entry (HASH), KEYS[4]: the workspace's aggregates for the entry's day, KEYS[5]: the user's; then
-- three per line: spent (STRING), amounts (HASH), expiries (ZSET).
-- ARGV, layout UNSETTLE in proxy_core/stores/lua_argv.py: [3] request_id, [4] amount, [5] keep_s
-- (seconds a line's keys are kept after it resets), [6] reaped_keep_s (seconds the reaped ID stays
-- interrupted), [7] user_id, [8] model, [9] metrics (how many), [10] source (the entry's);
-- [11 ..] resets_at per line, then metric name/value pairs, then the entry's field/value pairs.
-- Called with KEYS[1..2] and request_id only (UNSETTLE_INDEX_ONLY), it just tidies the index (the
-- caller saw no owner).
-- Returns 1 when it wrote the unsettled entry, else 0.
local rest = 11
local now = clock()
local id = ARGV[3]
local held = redis.call('HMGET', KEYS[1], 'state', 'expires_at', 'owner', 'reaped')
local expires_at = tonumber(held[2])
if held[1] ~= 'claimed' or not held[3] or held[4] == '1' then
  redis.call('ZREM', KEYS[2], id)
  return 0
end
if #KEYS < 5 or (expires_at and now < expires_at) then
  -- still live, or (called with the index keys only) owned again since the caller looked
  return 0
end
local amount, keep = ARGV[4], tonumber(ARGV[5])
local lines = (#KEYS - 5) / 3
local fresh = redis.call('EXISTS', KEYS[3]) == 0
for i = 1, lines do
  local spent_key, amounts, expiries = KEYS[3 + 3 * i], KEYS[4 + 3 * i], KEYS[5 + 3 * i]
  redis.call('HDEL', amounts, id)
  redis.call('ZREM', expiries, id)
  if fresh then
    redis.call('INCRBY', spent_key, amount)
    expire_in(spent_key, math.max(0, tonumber(ARGV[rest - 1 + i]) - now) + keep)
  end
end
if fresh then
  local m = rest + lines
  local metrics = tonumber(ARGV[9])
  add_usage(KEYS[4], KEYS[5], ARGV[7], ARGV[8], ARGV[10], ARGV, m, metrics, 1)
  local entry = {}
  for i = m + 2 * metrics, #ARGV do
    entry[#entry + 1] = ARGV[i]
  end
  redis.call('HSET', KEYS[3], unpack(entry))
end
local reaped_keep = tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'reaped', '1', 'expires_at', num(now + reaped_keep))
expire_in(KEYS[1], reaped_keep)
redis.call('ZREM', KEYS[2], id)
return fresh and 1 or 0
