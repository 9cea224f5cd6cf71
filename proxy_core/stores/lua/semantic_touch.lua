-- Mark entries most recently used, in the order given (hits a replica served from its own copy of
-- the answer, reported in batches). ARGV[4 ..]: entry ids; missing ones are skipped.
-- Returns how many were touched.
local touched = 0
for i = 4, #ARGV do
  touched = touched + touch(ARGV[i])
end
return touched
