-- Settle a request, once: drop its reservation, add its cost to every budget line, write the
-- ledger entry and the day's aggregates, and record the result. A second settle changes nothing.
-- KEYS[1]: ledger entry (HASH, durable), KEYS[2]: the request (HASH), KEYS[3]: the workspace's
-- aggregates for the entry's day (HASH, fields 't:<metric>', 'u:<metric>:<user>',
-- 'm:<metric>:<model>'), KEYS[4]: the user's aggregates for that day (HASH, '<metric>:<model>');
-- then three per line: spent (STRING), amounts (HASH), expiries (ZSET).
-- ARGV[3]: reservation id ('' = none), ARGV[4]: cost_micros, ARGV[5]: '1' if a result is given,
-- ARGV[6]: result, ARGV[7]: result ttl_s, ARGV[8]: seconds a line's keys are kept after it resets,
-- ARGV[9]: user id, ARGV[10]: model, ARGV[11]: number of metrics, ARGV[12]: '1' when the request
-- is not claimed yet and must not be held by anyone (a cache hit, claimed and settled at once);
-- then resets_at per line, then metric name/value pairs, then the entry's field/value pairs.
-- Returns {'settled'} when the entry was written, {'seen'} when the ledger already held it, and,
-- when claiming, the live claim or result that holds the request ({'in_flight'}, {'done', result}).
local now = clock()
if ARGV[12] == '1' then
  local held = held_request(KEYS[2], now)
  if held then
    return held
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'seen'}
end
local reservation, cost, keep = ARGV[3], ARGV[4], tonumber(ARGV[8])
local user, model, metrics = ARGV[9], ARGV[10], tonumber(ARGV[11])
local lines = (#KEYS - 4) / 3

for i = 1, lines do
  local spent_key, amounts, expiries = KEYS[2 + 3 * i], KEYS[3 + 3 * i], KEYS[4 + 3 * i]
  if reservation ~= '' then
    redis.call('HDEL', amounts, reservation)
    redis.call('ZREM', expiries, reservation)
  end
  redis.call('INCRBY', spent_key, cost)
  expire_in(spent_key, math.max(0, tonumber(ARGV[12 + i]) - now) + keep)
end

local m = 13 + lines
for _ = 1, metrics do
  local metric, value = ARGV[m], ARGV[m + 1]
  if value ~= '0' then
    redis.call('HINCRBY', KEYS[3], 't:' .. metric, value)
    redis.call('HINCRBY', KEYS[3], 'u:' .. metric .. ':' .. user, value)
    redis.call('HINCRBY', KEYS[3], 'm:' .. metric .. ':' .. model, value)
    redis.call('HINCRBY', KEYS[4], metric .. ':' .. model, value)
  end
  m = m + 2
end

local entry = {}
for i = m, #ARGV do
  entry[#entry + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(entry))

if ARGV[5] == '1' then
  write_result(KEYS[2], now, ARGV[6], tonumber(ARGV[7]))
end
return {'settled'}
