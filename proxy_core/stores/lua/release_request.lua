-- Give up a claim so a retry may run the request again; a recorded result stays, and so does a
-- reaped claim (its unsettled charge is what may have been spent).
-- KEYS[1]: the request HASH. ARGV, layout RELEASE_REQUEST in proxy_core/stores/lua_argv.py: none after the clock's.
local held = redis.call('HMGET', KEYS[1], 'state', 'reaped')
if held[1] == 'claimed' and held[2] ~= '1' then
  redis.call('DEL', KEYS[1])
end
return 1
