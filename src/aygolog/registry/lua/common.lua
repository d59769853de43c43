-- Helpers shared by the registry scripts; redis.py puts this file in front of each of them.
-- Times are whole milliseconds from the server's TIME: one clock for every load balancer.
-- A stored record (a value of the services hash) is the Registration as a JSON object with
-- ',"registered_at":"<RFC 3339>"' spliced in before its closing brace.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- RFC 3339 in UTC with milliseconds, e.g. 2024-05-01T12:00:00.123Z
-- (days to civil date: Howard Hinnant's algorithm, valid for any date after 1970).
local function iso(ms)
  local seconds = math.floor(ms / 1000)
  local millis = ms - seconds * 1000
  local days = math.floor(seconds / 86400)
  local sod = seconds - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400
  if month <= 2 then
    year = year + 1
  end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', year, month, day,
    math.floor(sod / 3600), math.floor(sod / 60) % 60, sod % 60, millis)
end

-- The ServiceInstance as JSON: the stored record plus the heartbeat and the status.
local function instance_json(stored, heartbeat, now, ttl)
  local status = 'healthy'
  if now - heartbeat > ttl then
    status = 'expired'
  end
  return string.sub(stored, 1, -2) .. ',"last_heartbeat":"' .. iso(heartbeat)
    .. '","status":"' .. status .. '"}'
end

-- Announce a RegistryEvent as JSON on the events channel, in the same atomic step as the change.
local function publish(channel, kind, name, now, instance)
  redis.call('PUBLISH', channel, '{"kind":"' .. kind .. '","name":' .. cjson.encode(name)
    .. ',"at":"' .. iso(now) .. '","instance":' .. instance .. '}')
end

