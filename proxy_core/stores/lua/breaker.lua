-- Circuit breaker transitions of proxy_core/breaker.py (acquire / record), at the store clock.
-- KEYS[1]: the breaker, a HASH with the fields of BreakerState (a missing field is closed / zero).
-- ARGV, layout BREAKER in proxy_core/stores/lua_argv.py: [3] op ('acquire', 'peek' or 'record'),
-- [4] success ('1' if the recorded call succeeded); the policy: [5] failure_threshold,
-- [6] failure_ratio, [7] min_calls, [8] window_s, [9] cooldown_s, [10] probe_timeout_s,
-- [11] max_cooldown_s; [12] pending (the recording process's other attempts still in flight).
-- acquire returns {allowed, probe, retry_after, state}; peek returns the same without writing,
-- except that where acquire would grant a probe it returns allowed = 2 (acquire to get it);
-- record returns the new state, fields in BreakerState order.
--
-- A failure in 'closed' opens the breaker when the streak outnumbers both the threshold and the
-- pending calls that could still break it, or when, with at least min_calls in the window, the
-- failures reach failure_ratio of the calls plus the pending ones. Each failed probe doubles the
-- cooldown (up to max_cooldown_s, see breaker.cooldown); a successful probe closes and resets it.
local now = clock()
local op, success = ARGV[3], ARGV[4] == '1'
local failure_threshold, failure_ratio = tonumber(ARGV[5]), tonumber(ARGV[6])
local min_calls, window_s = tonumber(ARGV[7]), tonumber(ARGV[8])
local cooldown_s, probe_timeout_s = tonumber(ARGV[9]), tonumber(ARGV[10])
local max_cooldown_s, pending = tonumber(ARGV[11]), math.max(0, tonumber(ARGV[12]) or 0)

local FIELDS = {'state', 'consecutive_failures', 'window_start', 'window_calls', 'window_failures',
                'opened_at', 'probe_deadline', 'failed_probes'}
local raw = redis.call('HMGET', KEYS[1], unpack(FIELDS))
local s = {state = raw[1] or 'closed'}
for i = 2, #FIELDS do
  s[FIELDS[i]] = tonumber(raw[i]) or 0
end

local function fresh(state, at, failed_probes)
  return {state = state, consecutive_failures = 0, window_start = at, window_calls = 0,
          window_failures = 0, opened_at = state == 'open' and at or 0, probe_deadline = 0,
          failed_probes = failed_probes}
end

-- breaker.cooldown: doubled per failed probe (at most 62 times), capped, never below cooldown_s.
local function cooldown(state)
  local doubled = cooldown_s * 2 ^ math.min(state.failed_probes, 62)
  return math.min(doubled, math.max(cooldown_s, max_cooldown_s))
end

local function save(state)
  local args = {}
  for _, f in ipairs(FIELDS) do
    args[#args + 1] = f
    args[#args + 1] = f == 'state' and state.state or num(state[f])
  end
  redis.call('HSET', KEYS[1], unpack(args))
end

local function reply(state)
  local out = {}
  for _, f in ipairs(FIELDS) do
    out[#out + 1] = f == 'state' and state.state or num(state[f])
  end
  return out
end

if op == 'acquire' or op == 'peek' then
  if s.state == 'closed' then
    return {1, 0, '0', 'closed'}
  end
  if s.state == 'open' then
    local reopen = s.opened_at + cooldown(s)
    if now < reopen then
      return {0, 0, num(reopen - now), 'open'}
    end
    if op == 'peek' then
      return {2, 0, '0', 'open'}
    end
    s.state = 'half_open'
    s.probe_deadline = now + probe_timeout_s
    save(s)
    return {1, 1, '0', 'half_open'}
  end
  -- half_open: one probe at a time; a probe whose caller vanished stops counting at its deadline.
  if now < s.probe_deadline then
    return {0, 0, num(s.probe_deadline - now), 'half_open'}
  end
  if op == 'peek' then
    return {2, 0, '0', 'half_open'}
  end
  s.probe_deadline = now + probe_timeout_s
  save(s)
  return {1, 1, '0', 'half_open'}
end

-- record
if s.state == 'half_open' then
  s = success and fresh('closed', now, 0) or fresh('open', now, s.failed_probes + 1)
  save(s)
  return reply(s)
end
if s.state == 'open' then
  -- A late report from a call admitted before the breaker opened changes nothing.
  return reply(s)
end
if now - s.window_start >= window_s then
  s.window_start, s.window_calls, s.window_failures = now, 0, 0
end
s.window_calls = s.window_calls + 1
if success then
  s.consecutive_failures = 0
else
  s.window_failures = s.window_failures + 1
  s.consecutive_failures = s.consecutive_failures + 1
  local streak = s.consecutive_failures >= failure_threshold and s.consecutive_failures >= pending
  local ratio = s.window_calls >= min_calls and s.window_failures >= failure_ratio * (s.window_calls + pending)
  if streak or ratio then
    s = fresh('open', now, 0)
  end
end
save(s)
return reply(s)
