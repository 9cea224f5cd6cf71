-- Settle a request, once: drop its reservation, add its cost to every budget line, write the
-- ledger entry and the day's aggregates, and record the result. A second settle changes nothing,
-- except over an unsettled charge (unsettle.lua), which it replaces: that charge is taken back out
-- of the aggregates and every line moves by the difference.
-- KEYS[1]: ledger entry (HASH, durable), KEYS[2]: the request (HASH), KEYS[3]: the workspace's
-- aggregates for the entry's day (HASH, see add_usage), KEYS[4]: the user's aggregates for that
-- day (HASH); then three per line: spent (STRING), amounts (HASH), expiries (ZSET).
-- ARGV, layout SETTLE in proxy_core/stores/lua_argv.py: [3] reservation_id ('' = none),
-- [4] cost_micros, [5] has_result ('1' if a result is given), [6] result, [7] result_ttl_s,
-- [8] keep_s (seconds a line's keys are kept after it resets), [9] user_id, [10] model, [11] metrics
-- (how many), [12] claim ('1' when the request is not claimed yet and must not be held by anyone: a
-- cache hit, claimed and settled at once), [13] day (the entry's), [14] source (the entry's);
-- [15 ..] resets_at per line, then metric name/value pairs, then the entry's field/value pairs.
-- Returns {'settled'} when the entry was written, {'seen'} when the ledger already held it,
-- {'replace_day', day} when an unsettled charge to replace is on another day (the caller settles
-- again with that day), and, when claiming, the live claim or result that holds the request, or
-- its unsettled charge ({'in_flight'}, {'done', result}, {'interrupted'}): a hit never replaces it.
local rest = 15
local now = clock()
if ARGV[12] == '1' then
  local held = held_request(KEYS[2], now) or ledger_holds(KEYS[1], true)
  if held then
    return held
  end
end
local reservation, cost, keep = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[8])
local user, model, metrics, source = ARGV[9], ARGV[10], tonumber(ARGV[11]), ARGV[14]
local lines = (#KEYS - 4) / 3
local added = cost
if redis.call('EXISTS', KEYS[1]) == 1 then
  local old = redis.call('HMGET', KEYS[1], 'unsettled', 'cost_micros', 'day', 'model', 'source', 'kind')
  if old[1] ~= '1' then
    return {'seen'}
  end
  if old[3] ~= ARGV[13] then
    return {'replace_day', old[3]}
  end
  -- What unsettle.lua counted for the charge (an unsettled entry has no tokens, hits or savings).
  local charged = {'requests', '1', 'cost_micros', old[2], 'unsettled', '1', 'unsettled_micros', old[2],
                   'embeddings', old[6] == 'embedding' and '1' or '0'}
  add_usage(KEYS[3], KEYS[4], user, old[4], old[5] or '', charged, 1, 5, -1)
  added = cost - tonumber(old[2])
end

for i = 1, lines do
  local spent_key, amounts, expiries = KEYS[2 + 3 * i], KEYS[3 + 3 * i], KEYS[4 + 3 * i]
  if reservation ~= '' then
    redis.call('HDEL', amounts, reservation)
    redis.call('ZREM', expiries, reservation)
  end
  if added ~= 0 then
    redis.call('INCRBY', spent_key, string.format('%d', added))
  end
  expire_in(spent_key, math.max(0, tonumber(ARGV[rest - 1 + i]) - now) + keep)
end

local m = rest + lines
add_usage(KEYS[3], KEYS[4], user, model, source, ARGV, m, metrics, 1)
m = m + 2 * metrics

local entry = {}
for i = m, #ARGV do
  entry[#entry + 1] = ARGV[i]
end
redis.call('HSET', KEYS[1], unpack(entry))

if ARGV[5] == '1' then
  write_result(KEYS[2], now, ARGV[6], tonumber(ARGV[7]))
end
return {'settled'}
