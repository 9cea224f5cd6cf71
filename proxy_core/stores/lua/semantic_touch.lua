-- Mark entries most recently used, in the order given (hits a replica served from its own copy of
-- the answer, reported in batches); missing ones are skipped. Returns how many were touched.
-- ARGV, layout SEMANTIC_TOUCH in proxy_core/stores/lua_argv.py: [4 ..] entry ids.
local rest = 4
local touched = 0
for i = rest, #ARGV do
  touched = touched + touch(ARGV[i])
end
return touched
