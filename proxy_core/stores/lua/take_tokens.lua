-- Token buckets, all or nothing: the arithmetic of proxy_core/limiter.py::take, at the store clock.
-- KEYS[i]: bucket i, a HASH {tokens, updated}. ARGV[3 + 3(i-1) ..]: rate, burst, cost of bucket i.
-- Returns {allowed (1/0), retry_after, blocking (0-based; -1 = none), remaining_1, ..., remaining_n}.
local now = clock()
local n = #KEYS
local rate, burst, cost, tokens, updated = {}, {}, {}, {}, {}

for i = 1, n do
  local a = 3 + (i - 1) * 3
  rate[i], burst[i], cost[i] = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'updated')
  local t, u = tonumber(state[1]), tonumber(state[2])
  if t == nil or u == nil then
    -- Never seen (or forgotten once full again): a full bucket.
    tokens[i], updated[i] = burst[i], now
  else
    tokens[i] = math.min(burst[i], t + math.max(0, now - u) * rate[i])
    updated[i] = math.max(now, u)
  end
end

-- A cost above capacity is capped at capacity, so such a request can pass once the bucket is full.
local retry_after, blocking = 0, -1
for i = 1, n do
  local need = math.min(cost[i], burst[i])
  if tokens[i] < need then
    local wait = math.huge
    if rate[i] > 0 then
      wait = (need - tokens[i]) / rate[i]
    end
    if wait > retry_after then
      retry_after, blocking = wait, i - 1
    end
  end
end

local debits = false
if blocking < 0 then
  for i = 1, n do
    tokens[i] = tokens[i] - math.min(cost[i], burst[i])
    if cost[i] > 0 then
      debits = true
    end
  end
end

-- A refusal or a pure peek debits nothing, so there is nothing worth writing.
if debits then
  for i = 1, n do
    redis.call('HSET', KEYS[i], 'tokens', num(tokens[i]), 'updated', num(updated[i]))
    if rate[i] > 0 then
      -- Once full again the bucket equals a missing one, so it may be forgotten then.
      expire_in(KEYS[i], (burst[i] - tokens[i]) / rate[i])
    else
      redis.call('PERSIST', KEYS[i])
    end
  end
end

local reply = {blocking < 0 and 1 or 0, num(retry_after), blocking}
for i = 1, n do
  reply[#reply + 1] = num(tokens[i])
end
return reply
