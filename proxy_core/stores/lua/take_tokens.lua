-- Token buckets, all or nothing (take_buckets in _request.lua).
-- KEYS[i]: bucket i. ARGV, layout TAKE_TOKENS in proxy_core/stores/lua_argv.py: [3 ..] rate, burst
-- and cost per bucket.
-- Returns {allowed (1/0), retry_after, blocking (0-based; -1 = none), remaining_1, ..., remaining_n}.
local rest = 3
local t = take_buckets(KEYS, 1, #KEYS, ARGV, rest, clock())
write_buckets(t)
return bucket_reply(t)
