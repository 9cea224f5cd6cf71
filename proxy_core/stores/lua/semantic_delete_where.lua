-- Delete up to `limit` entries, logging each: with `mode` 'prefix', those whose context starts
-- with `prefix` ('' = every entry); with `mode` 'expired', those with expires_at <= now.
-- ARGV, layout SEMANTIC_DELETE_WHERE in proxy_core/stores/lua_argv.py: [4] mode, [5] prefix, [6] limit.
-- Returns {how many index entries were looked at, {deleted ids}}; fewer than `limit` looked at
-- means none are left.
local mode, prefix, limit = ARGV[4], ARGV[5], tonumber(ARGV[6])

-- Delete the entry of each of `members` of the index `index` (`id_of` reads its id from a member)
-- and take the member out: an index entry without its record would otherwise come back forever.
local function remove_members(index, members, id_of)
  local deleted = {}
  for _, member in ipairs(members) do
    local id = id_of(member)
    if remove(id) then
      deleted[#deleted + 1] = id
    end
    redis.call('ZREM', index, member)
  end
  return {#members, deleted}
end

if mode == 'expired' then
  local due = redis.call('ZRANGEBYSCORE', EXPIRIES, '-inf', num(clock()), 'LIMIT', 0, limit)
  return remove_members(EXPIRIES, due, function(id) return id end)
end

-- Members starting with the escaped prefix sort from it up to it followed by byte 255, which
-- neither UTF-8 nor the escaping ever produces.
local low, high = '-', '+'
if prefix ~= '' then
  low, high = '[' .. escape(prefix), '(' .. escape(prefix) .. '\255'
end
local matching = redis.call('ZRANGEBYLEX', CONTEXTS, low, high, 'LIMIT', 0, limit)
return remove_members(CONTEXTS, matching, function(member)
  return string.sub(member, string.find(member, '\0\0', 1, true) + 2)
end)
