-- Prepended (after _common.lua) to every semantic_*.lua script by proxy_core/stores/redis.py.
--
-- Every semantic script gets the same KEYS, all under the namespace's {sem} hash tag:
--   KEYS[1] HASH   entry id -> record: the entry without its answer (layout below)
--   KEYS[2] HASH   entry id -> answer
--   KEYS[3] ZSET   entry id -> last used (store clock in integer microseconds, strictly increasing)
--   KEYS[4] ZSET   entry id -> expires_at
--   KEYS[5] ZSET   all scores 0; member = escaped context .. '\0\0' .. entry id (prefix index)
--   KEYS[6] STREAM the change log replicas tail
--   KEYS[7] STRING the log's epoch: set whenever the log is (re)created, part of every cursor, so a
--                  cursor into a lost log is always recognised (stream ids alone can repeat)
-- ARGV[3] is how many log events to keep (XADD MAXLEN ~, so at least that many).
--
-- A record is little-endian: created_at, expires_at (doubles), then scope, context and question,
-- each a uint32 length and UTF-8 bytes, then the vector's bytes to the end.

local RECORDS, ANSWERS, LAST_USED, EXPIRIES, CONTEXTS, LOG = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local EPOCH = KEYS[7]
local RETAIN = ARGV[3]

-- scope, context, expires_at of a record.
local function record_head(record)
  local _, expires_at, scope, context = struct.unpack('<ddI4c0I4c0', record)
  return scope, context, expires_at
end

-- NUL bytes of a context become '\0\1', so '\0\0' can end it and members still sort, and match
-- prefixes, exactly as the contexts do.
local function escape(context)
  return (string.gsub(context, '%z', '\0\1'))
end

local function context_member(context, id)
  return escape(context) .. '\0\0' .. id
end

-- Now, as the entry's last use: the store clock in microseconds, past the latest use so far.
local function next_use()
  local now = math.floor(clock() * 1000000)
  local latest = redis.call('ZREVRANGE', LAST_USED, 0, 0, 'WITHSCORES')[2]
  if latest and tonumber(latest) >= now then
    now = tonumber(latest) + 1
  end
  return num(now)
end

-- Append one event; returns its stream id.
local function log(...)
  if redis.call('EXISTS', LOG) == 0 then
    redis.call('SET', EPOCH, table.concat(redis.call('TIME'), '.'))
  end
  return redis.call('XADD', LOG, 'MAXLEN', '~', RETAIN, '*', ...)
end

-- The id of the log's newest event ever ('' when there is no log).
local function log_head()
  if redis.call('EXISTS', LOG) == 0 then
    return ''
  end
  local raw = redis.call('XINFO', 'STREAM', LOG)
  for i = 1, #raw, 2 do
    if raw[i] == 'last-generated-id' then
      return raw[i + 1]
    end
  end
  return ''
end

-- Delete one entry and log it; returns the event's stream id, or false when it did not exist.
local function remove(id)
  local record = redis.call('HGET', RECORDS, id)
  if not record then
    return false
  end
  local scope, context = record_head(record)
  redis.call('HDEL', RECORDS, id)
  redis.call('HDEL', ANSWERS, id)
  redis.call('ZREM', LAST_USED, id)
  redis.call('ZREM', EXPIRIES, id)
  redis.call('ZREM', CONTEXTS, context_member(context, id))
  return log('op', 'delete', 'id', id, 'scope', scope)
end

-- Mark an existing entry most recently used; returns 1 if it exists, else 0.
local function touch(id)
  if redis.call('HEXISTS', RECORDS, id) == 1 then
    redis.call('ZADD', LAST_USED, 'XX', next_use(), id)
    return 1
  end
  return 0
end
