-- Give back what one admission took, its reservation and its claim, so a retry may run the request
-- again; only while that admission's own claim holds the ID (its owner JSON names the call). A
-- release that comes late (replayed from a spool) never undoes a newer admission of the request.
-- A reaped claim stays (its unsettled charge is what may have been spent); its reservation goes.
-- KEYS[1]: the request HASH, then two keys per capped budget line: amounts (HASH), expiries (ZSET).
-- ARGV, layout RELEASE_ADMISSION in proxy_core/stores/lua_argv.py: [3] reservation_id, [4] call.
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then
  return 0
end
local ok, held = pcall(cjson.decode, owner)
if not ok or type(held) ~= 'table' or held['call'] ~= ARGV[4] then
  return 0
end
for i = 2, #KEYS, 2 do
  redis.call('HDEL', KEYS[i], ARGV[3])
  redis.call('ZREM', KEYS[i + 1], ARGV[3])
end
local state = redis.call('HMGET', KEYS[1], 'state', 'reaped')
if state[1] == 'claimed' and state[2] ~= '1' then
  redis.call('DEL', KEYS[1])
end
return 1
