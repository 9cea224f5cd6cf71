-- Drop a reservation from every line without spending.
-- KEYS, two per line: amounts (HASH), expiries (ZSET).
-- ARGV, layout RELEASE in proxy_core/stores/lua_argv.py: [3] reservation_id.
for i = 1, #KEYS, 2 do
  redis.call('HDEL', KEYS[i], ARGV[3])
  redis.call('ZREM', KEYS[i + 1], ARGV[3])
end
return 1
