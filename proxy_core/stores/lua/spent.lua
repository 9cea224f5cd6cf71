-- (spent, live reserved) micro-dollars on one budget line. Reads only.
-- KEYS[1]: spent (STRING), KEYS[2]: amounts (HASH), KEYS[3]: expiries (ZSET).
-- ARGV, layout SPENT in proxy_core/stores/lua_argv.py: none after the clock's.
local now = clock()
local spent = tonumber(redis.call('GET', KEYS[1])) or 0
local reserved = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. num(now), '+inf')) do
  reserved = reserved + (tonumber(redis.call('HGET', KEYS[2], id)) or 0)
end
return {spent, reserved}
