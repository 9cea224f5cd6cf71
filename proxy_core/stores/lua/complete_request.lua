-- Record a request's result for ttl_s seconds (replacing its claim).
-- KEYS[1]: the request HASH.
-- ARGV, layout COMPLETE_REQUEST in proxy_core/stores/lua_argv.py: [3] result (JSON text), [4] ttl_s.
write_result(KEYS[1], clock(), ARGV[3], tonumber(ARGV[4]))
return 1
