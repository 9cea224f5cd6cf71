-- Raise one admission's reservation to a new whole amount, checked on every budget line as admit.lua
-- checks it (check_budget): all or nothing. Only while that admission's own live claim holds the ID
-- (its owner JSON names the call; an expired claim is the reaper's). The owner JSON is replaced by
-- one carrying the new amount, so a claim reaped later is charged that much. Never lowers.
-- KEYS[1]: the request HASH, then three keys per capped budget line: spent (STRING), amounts
-- (HASH), expiries (ZSET).
-- ARGV, layout TOP_UP_ADMISSION in proxy_core/stores/lua_argv.py: [3] reservation_id, [4] amount,
-- [5] call, [6] owner (the owner JSON with the new amount); [7 ..] limit and resets_at per line.
-- Returns {'topped_up'}, {'over_budget', line (1-based), spent, reserved by others} or {'not_held'}.
local rest = 7
local now = clock()
local held = redis.call('HMGET', KEYS[1], 'state', 'expires_at', 'owner', 'reaped')
local expires_at = tonumber(held[2])
if held[1] ~= 'claimed' or not held[3] or held[4] == '1' or not expires_at or now >= expires_at then
  return {'not_held'}
end
local ok, owner = pcall(cjson.decode, held[3])
if not ok or type(owner) ~= 'table' or owner['call'] ~= ARGV[5] then
  return {'not_held'}
end
local id, amount = ARGV[3], tonumber(ARGV[4])
local lines = (#KEYS - 1) / 3
local refusal = check_budget(KEYS, 2, lines, ARGV, rest, id, amount, now)
if refusal then
  return {'over_budget', refusal[2], refusal[3], refusal[4]}
end
for i = 1, lines do
  local amounts = KEYS[3 * i]
  local current = tonumber(redis.call('HGET', amounts, id))
  -- A live claim's reservation outlives it (admit.lua), so it is there to raise.
  if current and current < amount then
    redis.call('HSET', amounts, id, ARGV[4])
  end
end
if (tonumber(owner['amount']) or 0) < amount then
  redis.call('HSET', KEYS[1], 'owner', ARGV[6])
end
return {'topped_up'}
