-- Up to `limit` change-log events after `cursor` (a stream id; '' = just the head) of the log
-- epoch `cursor_epoch`. ARGV, layout SEMANTIC_CHANGES in proxy_core/stores/lua_argv.py: [4] cursor,
-- [5] limit, [6] cursor_epoch. Returns {reset (1/0), head, events, epoch}. reset = 1 when events after the
-- cursor are gone (trimmed) or the cursor belongs to a log that was lost (deleted, flushed,
-- recreated: another epoch): the caller reloads.
local cursor, limit, cursor_epoch = ARGV[4], tonumber(ARGV[5]), ARGV[6]
local epoch = redis.call('GET', EPOCH) or ''

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function before(a, b)
  local a_ms, a_seq = parse(a)
  local b_ms, b_seq = parse(b)
  return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
end

if redis.call('EXISTS', LOG) == 0 then
  -- Nothing was ever logged, or the log was lost under a cursor that points into it.
  return {(cursor ~= '' and cursor ~= '0-0') and 1 or 0, '0-0', {}, epoch}
end

local raw, info = redis.call('XINFO', 'STREAM', LOG), {}
for i = 1, #raw, 2 do
  info[raw[i]] = raw[i + 1]
end
local head = info['last-generated-id']
if cursor == '' then
  return {0, head, {}, epoch}
end
if cursor_epoch ~= epoch and not (cursor == '0-0' and cursor_epoch == '') then
  return {1, head, {}, epoch} -- a cursor into another life of the log
end

local first = info['first-entry'] and info['first-entry'][1]
local trimmed = info['max-deleted-entry-id']
local reset
if before(head, cursor) then
  reset = true -- the cursor is from a newer log than this one
elseif trimmed then
  -- Redis >= 7.0 says what trimming removed: reset when it removed events after the cursor, or
  -- when the cursor's own event was never removed yet is not here (a recreated log).
  reset = before(cursor, trimmed)
    or (cursor ~= '0-0' and before(trimmed, cursor) and (not first or before(cursor, first)))
else
  -- Older servers: reset whenever the log no longer reaches back to the cursor.
  reset = first and before(cursor, first)
end
if reset then
  return {1, head, {}, epoch}
end
return {0, head, redis.call('XRANGE', LOG, '(' .. cursor, '+', 'COUNT', limit), epoch}
