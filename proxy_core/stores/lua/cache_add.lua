-- Store a value for ttl_s seconds unless a live one holds the key (a record's put-if-absent).
-- Returns false when it stored, else the live value, left alone. KEYS[1]: the entry HASH.
-- ARGV, layout CACHE_ADD in proxy_core/stores/lua_argv.py: [3] value, [4] ttl_s.
local held = redis.call('HMGET', KEYS[1], 'value', 'expires_at')
local expires_at = tonumber(held[2])
if held[1] and expires_at and clock() < expires_at then
  return held[1]
end
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'value', ARGV[3], 'expires_at', num(clock() + ttl))
expire_in(KEYS[1], ttl)
return false
