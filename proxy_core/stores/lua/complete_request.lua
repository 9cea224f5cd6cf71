-- Record a request's result for ttl_s seconds (replacing its claim).
-- KEYS[1]: the request HASH. ARGV[3]: result (JSON text), ARGV[4]: ttl_s.
local now = clock()
local ttl = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'state', 'done', 'result', ARGV[3], 'expires_at', num(now + ttl))
expire_in(KEYS[1], ttl)
return 1
