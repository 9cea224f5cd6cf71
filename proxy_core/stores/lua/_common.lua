-- Prepended to every script by proxy_core/stores/redis.py; not a script of its own.
--
-- Every script is called with ARGV[1] = an injected clock reading ('' = none: use the server's
-- TIME, so replicas with skewed clocks agree) and ARGV[2] = milliseconds added to real key
-- expiries. Redis expires keys by its own time; with an injected clock the logical expiry
-- (stored next to the value) decides, and the real one only bounds memory, so it gets slack.

local cached_now = nil
local function clock()
  if cached_now == nil then
    cached_now = tonumber(ARGV[1])
    if cached_now == nil then
      local t = redis.call('TIME')
      cached_now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    end
  end
  return cached_now
end

local EXPIRY_SLACK_MS = tonumber(ARGV[2]) or 0
local MAX_TTL_MS = 10 * 366 * 86400 * 1000

-- Floats travel as text: a number returned to Redis is truncated to an integer, and '%.17g'
-- round-trips a double exactly.
local function num(x)
  return string.format('%.17g', x)
end

-- Let ``key`` vanish ``seconds`` from now (plus the slack), never sooner than 1 ms.
local function expire_in(key, seconds)
  local ms = math.min(MAX_TTL_MS, math.max(1, math.ceil(seconds * 1000)))
  redis.call('PEXPIRE', key, string.format('%d', ms + EXPIRY_SLACK_MS))
end
