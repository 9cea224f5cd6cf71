-- Delete entries, logging each that existed. ARGV[4..]: entry ids. Returns how many existed.
local existed = 0
for i = 4, #ARGV do
  if remove(ARGV[i]) then
    existed = existed + 1
  end
end
return existed
