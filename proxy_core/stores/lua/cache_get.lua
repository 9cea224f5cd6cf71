-- The cached value unless expired. KEYS[1]: the entry, a HASH {value, expires_at}.
-- ARGV, layout CACHE_GET in proxy_core/stores/lua_argv.py: none after the clock's.
local held = redis.call('HMGET', KEYS[1], 'value', 'expires_at')
local expires_at = tonumber(held[2])
if held[1] and expires_at and clock() < expires_at then
  return held[1]
end
return false
