-- Give up a claim so a retry may run the request again; a recorded result stays.
-- KEYS[1]: the request HASH.
if redis.call('HGET', KEYS[1], 'state') == 'claimed' then
  redis.call('DEL', KEYS[1])
end
return 1
