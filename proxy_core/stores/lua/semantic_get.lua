-- An entry with its answer unless missing or expired (expires_at <= now); `touch` = '1' also
-- marks it most recently used. ARGV, layout SEMANTIC_GET in proxy_core/stores/lua_argv.py: [4] entry_id,
-- [5] touch. Returns {record, answer} or nil.
local id = ARGV[4]
local record = redis.call('HGET', RECORDS, id)
if not record then
  return false
end
local _, _, expires_at = record_head(record)
if expires_at <= clock() then
  return false
end
if ARGV[5] == '1' then
  touch(id)
end
return {record, redis.call('HGET', ANSWERS, id)}
