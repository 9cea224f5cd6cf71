-- Claim a request ID unless a live claim or result holds it.
-- KEYS[1]: the request, a HASH {state = claimed|done, result, expires_at}. ARGV[3]: ttl_s.
-- Returns {'claimed'}, {'in_flight'} or {'done', result}.
local now = clock()
local ttl = tonumber(ARGV[3])
local held = redis.call('HMGET', KEYS[1], 'state', 'result', 'expires_at')
local expires_at = tonumber(held[3])
if held[1] and expires_at and now < expires_at then
  if held[1] == 'done' then
    return {'done', held[2]}
  end
  return {'in_flight'}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'state', 'claimed', 'expires_at', num(now + ttl))
expire_in(KEYS[1], ttl)
return {'claimed'}
