-- Delete cache entries; returns how many were still live (expired ones were already gone as far
-- as callers know). KEYS: the entries (HASH {value, expires_at}).
-- ARGV, layout CACHE_DELETE in proxy_core/stores/lua_argv.py: none after the clock's.
local now = clock()
local live = 0
for _, key in ipairs(KEYS) do
  local expires_at = tonumber(redis.call('HGET', key, 'expires_at'))
  if expires_at and now < expires_at then
    live = live + 1
  end
  redis.call('UNLINK', key)
end
return live
