-- Delete the entry if it is live and holds the value (compare-and-delete): a record's claim made
-- with cache_add is given up only by its holder, and a cached answer a 👎 names is evicted only
-- while it is still the one cached under its key. Returns 1 when deleted, else 0.
-- KEYS[1]: the entry HASH {value, expires_at}.
-- ARGV, layout CACHE_DROP in proxy_core/stores/lua_argv.py: [3] value.
local held = redis.call('HMGET', KEYS[1], 'value', 'expires_at')
local expires_at = tonumber(held[2])
if held[1] == ARGV[3] and expires_at and clock() < expires_at then
  redis.call('UNLINK', KEYS[1])
  return 1
end
return 0
