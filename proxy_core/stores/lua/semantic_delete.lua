-- Delete entries, logging each that existed. Returns how many existed.
-- ARGV, layout SEMANTIC_DELETE in proxy_core/stores/lua_argv.py: [4 ..] entry ids.
local rest = 4
local existed = 0
for i = rest, #ARGV do
  if remove(ARGV[i]) then
    existed = existed + 1
  end
end
return existed
