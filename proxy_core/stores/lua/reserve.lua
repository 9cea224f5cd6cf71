-- Reserve an amount on every budget line if it fits under each capped one; all or nothing.
-- KEYS, three per line: spent, amounts, expiries (see check_budget in _request.lua).
-- ARGV[3]: reservation id, ARGV[4]: amount, ARGV[5]: ttl_s, ARGV[6]: seconds a line's keys are kept
-- after its period resets; then per line: limit (0 = no cap), resets_at.
-- Returns {1} or {0, refusing line (1-based), spent, reserved by others}.
local now = clock()
local id, amount = ARGV[3], tonumber(ARGV[4])
local n = #KEYS / 3
local refusal = check_budget(KEYS, 1, n, ARGV, 7, id, amount, now)
if refusal then
  return refusal
end
write_reservation(KEYS, 1, n, ARGV, 7, id, ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), now)
return {1}
