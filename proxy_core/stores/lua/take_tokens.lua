-- Token buckets, all or nothing (take_buckets in _request.lua).
-- KEYS[i]: bucket i. ARGV[3 + 3(i-1) ..]: rate, burst, cost of bucket i.
-- Returns {allowed (1/0), retry_after, blocking (0-based; -1 = none), remaining_1, ..., remaining_n}.
local t = take_buckets(KEYS, 1, #KEYS, ARGV, 3, clock())
write_buckets(t)
return bucket_reply(t)
