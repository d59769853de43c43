-- Scan part of the stream for entries matching a filter, reading at most a bounded number of
-- entries so that one call never stalls Redis. The caller continues from the returned cursor.
-- KEYS[1] stream
-- ARGV[1] start (an XRANGE bound: '-', '+', 'ms-seq' or '(ms-seq')   ARGV[2] stop bound
-- ARGV[3] 'b' newest first (XREVRANGE) or 'f' oldest first   ARGV[4] how many matches are wanted
-- ARGV[5] scan budget (entries)   ARGV[6] most entries per XRANGE
-- ARGV[7] byte budget: stop after the match whose body brings the bodies returned to this many
-- ARGV[8] allowed severity digits ('' = any)   ARGV[9] services, each framed as "\n"..s.."\n" ('' = any)
-- ARGV[10] lower-cased text ('' = none)   ARGV[11..] attribute filters: key, value, key, value ...
-- Returns {cursor, done, id, instance, body, id, instance, body, ...}; done is 1 when the range
-- is exhausted, cursor is the last id read ('' when nothing was read).
local stream, pos, stop, dir = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local wanted, budget, chunk = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local max_bytes = tonumber(ARGV[7])
local levels, services, text = ARGV[8], ARGV[9], ARGV[10]
local attrs = {}
for i = 11, #ARGV, 2 do
  attrs[#attrs + 1] = {ARGV[i], ARGV[i + 1]}
end
local need_body = text ~= '' or #attrs > 0
local command = dir == 'b' and 'XREVRANGE' or 'XRANGE'
local find, lower = string.find, string.lower

local function attr_ok(value, want)
  local kind = type(value)
  if kind == 'string' then
    return value == want
  elseif kind == 'number' then
    return tonumber(want) == value
  elseif kind == 'boolean' then
    return (value and 'true' or 'false') == want
  end
  return false
end

-- Each XRANGE is sized so that it reads about CHUNK_BYTES (it is held in memory whole): the
-- first reads FIRST_CHUNK entries, the next as many as fit at the average size seen so far.
-- Unfiltered, every entry read is returned, so no more are read than the page still needs.
local CHUNK_BYTES, FIRST_CHUNK = 1048576, 32
local unfiltered = levels == '' and services == '' and not need_body
local out = {'', 0}
local found, scanned, last, bytes, seen_bytes = 0, 0, '', 0, 0
while true do
  local count = math.min(chunk, budget - scanned)
  if scanned == 0 then
    count = math.min(count, FIRST_CHUNK)
  else
    count = math.min(count, math.max(1, math.floor(CHUNK_BYTES * scanned / seen_bytes)))
  end
  if unfiltered then
    count = math.min(count, wanted - found)
  end
  if count <= 0 then break end
  local batch = redis.call(command, stream, pos, stop, 'COUNT', count)
  for _, entry in ipairs(batch) do
    local id, f = entry[1], entry[2]
    scanned = scanned + 1
    seen_bytes = seen_bytes + #f[8]
    last = id
    -- fields are written in this order: l, s, i, d
    local ok = levels == '' or find(levels, f[2], 1, true) ~= nil
    if ok and services ~= '' then
      ok = find(services, '\n' .. f[4] .. '\n', 1, true) ~= nil
    end
    if ok and need_body then
      local body = cjson.decode(f[8])
      if text ~= '' then
        ok = find(lower(body.message), text, 1, true) ~= nil
      end
      if ok and #attrs > 0 then
        local a = body.attributes
        for _, pair in ipairs(attrs) do
          if a == nil or not attr_ok(a[pair[1]], pair[2]) then
            ok = false
            break
          end
        end
      end
    end
    if ok then
      out[#out + 1] = id
      out[#out + 1] = f[6]
      out[#out + 1] = f[8]
      found = found + 1
      bytes = bytes + #f[8]
      if found >= wanted or bytes >= max_bytes then
        out[1] = id
        return out
      end
    end
  end
  if #batch < count then
    out[1] = last
    out[2] = 1
    return out
  end
  pos = '(' .. last
end
out[1] = last
return out
