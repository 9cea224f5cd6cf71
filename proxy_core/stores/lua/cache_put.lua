-- Store a cache entry for ttl_s seconds. KEYS[1]: the entry HASH.
-- ARGV, layout CACHE_PUT in proxy_core/stores/lua_argv.py: [3] value, [4] ttl_s.
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'value', ARGV[3], 'expires_at', num(clock() + ttl))
expire_in(KEYS[1], ttl)
return 1
