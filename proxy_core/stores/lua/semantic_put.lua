-- Store (or replace) an entry as the most recently used, then evict least recently used entries
-- while more than max_entries remain. Each step is logged: the put (record, no answer), then one
-- delete per eviction.
-- ARGV, layout SEMANTIC_PUT in proxy_core/stores/lua_argv.py: [4] entry_id, [5] record, [6] answer,
-- [7] max_entries (0 = no cap); [8 ..] entries to mark used after the put, in order (hits served
-- since the last report), before anything is evicted. Returns {epoch, after, through, evicted}: the
-- log's epoch and the stream ids just before this script's events and at its last one ('' when the
-- id before is unknown: a new or emptied log), then the evicted ids, least recently used first.
local rest = 8
local id, record, max_entries = ARGV[4], ARGV[5], tonumber(ARGV[7])

local after = log_head()

local old = redis.call('HGET', RECORDS, id)
if old then
  local _, old_context = record_head(old)
  redis.call('ZREM', CONTEXTS, context_member(old_context, id))
end
local scope, context, expires_at = record_head(record)
redis.call('HSET', RECORDS, id, record)
redis.call('HSET', ANSWERS, id, ARGV[6])
redis.call('ZADD', LAST_USED, next_use(), id)
redis.call('ZADD', EXPIRIES, num(expires_at), id)
redis.call('ZADD', CONTEXTS, 0, context_member(context, id))
local through = log('op', 'put', 'id', id, 'scope', scope, 'record', record)
for i = rest, #ARGV do
  touch(ARGV[i])
end

local evicted = {}
if max_entries > 0 then
  local excess = redis.call('HLEN', RECORDS) - max_entries
  if excess > 0 then
    for _, victim in ipairs(redis.call('ZRANGE', LAST_USED, 0, excess - 1)) do
      through = remove(victim) or through
      evicted[#evicted + 1] = victim
    end
  end
end
return {redis.call('GET', EPOCH) or '', after, through, evicted}
