-- Claim a request ID unless a live claim or result holds it.
-- KEYS[1]: the request HASH. ARGV, layout CLAIM_REQUEST in proxy_core/stores/lua_argv.py: [3] ttl_s.
-- Returns {'claimed'}, {'in_flight'} or {'done', result}.
local now = clock()
local held = held_request(KEYS[1], now)
if held then
  return held
end
write_claim(KEYS[1], now, tonumber(ARGV[3]), nil, 0)
return {'claimed'}
