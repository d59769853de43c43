-- The stream's version: a token that changes whenever an entry is added or removed, so that a
-- reader holding a page made at one version knows, in one cheap call, that it is still current.
-- KEYS[1] stream
-- Returns "<newest id>:<length>:<sha1 of the newest entry's instance and body>" ("" when empty).
-- The id grows with every XADD; trimming changes the length; the digest tells a stream that was
-- deleted and written again within the same millisecond from the one it replaced.
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest == 0 then
  return ''
end
local entry = newest[1]
local f = entry[2]
-- fields are written in this order: l, s, i, d
return entry[1] .. ':' .. redis.call('XLEN', KEYS[1]) .. ':' .. redis.sha1hex(f[6] .. '\n' .. f[8])
