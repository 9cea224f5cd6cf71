-- Admit a request in one step: claim its ID, take its rate-limit tokens and reserve its worst-case
-- cost; all or nothing, in that order, so a refused request holds nothing.
-- KEYS[1]: the request HASH, KEYS[2]: the workspace's owned claims (ZSET request id -> claim
-- expiry, the reaper's index), KEYS[3]: the request's ledger entry (HASH: once there, the ID is
-- never admitted again, see ledger_holds); then `buckets` bucket HASHes; then three keys per budget line.
-- ARGV, layout ADMIT in proxy_core/stores/lua_argv.py: [3] ttl_s (the claim's), [4] buckets (how
-- many), [5] reservation_id, [6] amount, [7] keep_s (seconds a line's keys, and an owned claim,
-- are kept after they expire), [8] reservation_ttl_s, [9] owner (the owner JSON, '' = a plain
-- claim); [10 ..] rate, burst and cost per bucket, then limit and resets_at per line.
-- Returns {'done', result}, {'done', nil} (answered before, its result forgotten), {'in_flight'},
-- {'interrupted'}, {'rate_limited', <bucket reply>},
-- {'over_budget', line, spent, reserved} or {'admitted', <bucket reply>}.
local rest = 10
local now = clock()
-- This very admission again: the client sent it a second time after losing the first reply (a
-- dropped connection, a cluster client's retry). Its owner JSON carries a nonce of the call, so
-- only the same call matches; it holds everything already and is admitted without taking twice
-- (the bucket reply then has no remaining tokens to tell).
if ARGV[9] ~= '' and redis.call('HGET', KEYS[1], 'owner') == ARGV[9] then
  return {'admitted', {1, '0', -1}}
end
local held = held_request(KEYS[1], now) or ledger_holds(KEYS[3], false)
if held then
  return held
end
local ttl, buckets, id, amount = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local keep, reservation_ttl, owner = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local lines = (#KEYS - 3 - buckets) / 3
local t = take_buckets(KEYS, 4, buckets, ARGV, rest, now)
if t.blocking >= 0 then
  return {'rate_limited', bucket_reply(t)}
end
local first_line, line_args = 4 + buckets, rest + 3 * buckets
local refusal = check_budget(KEYS, first_line, lines, ARGV, line_args, id, amount, now)
if refusal then
  return {'over_budget', refusal[2], refusal[3], refusal[4]}
end
write_claim(KEYS[1], now, ttl, owner, keep)
if owner ~= '' then
  redis.call('ZADD', KEYS[2], num(now + ttl), id)
  expire_in(KEYS[2], ttl + keep)
end
write_buckets(t)
write_reservation(KEYS, first_line, lines, ARGV, line_args, id, ARGV[6], reservation_ttl, keep, now)
return {'admitted', bucket_reply(t)}
