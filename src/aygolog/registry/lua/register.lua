-- Register an instance, or update it (same name): keeps registered_at, refreshes the heartbeat.
-- KEYS[1] services hash, KEYS[2] heartbeats zset, KEYS[3] expired set
-- ARGV[1] events channel, ARGV[2] ttl ms, ARGV[3] name, ARGV[4] the Registration as JSON
-- Emits 'registered' for a new instance or one that had expired (it came back), else 'updated'.
-- Returns the instance as JSON.
local services, heartbeats, expired = KEYS[1], KEYS[2], KEYS[3]
local channel, ttl, name = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now = now_ms()
local kind = 'registered'
local registered_at
local old = redis.call('HGET', services, name)
if old then
  registered_at = string.match(old, '"registered_at":"([^"]*)"}$')
  local heartbeat = tonumber(redis.call('ZSCORE', heartbeats, name))
  local was_announced = redis.call('SREM', expired, name) == 1
  if heartbeat and not was_announced and now - heartbeat <= ttl then
    kind = 'updated'
  end
end
registered_at = registered_at or iso(now)
local stored = string.sub(ARGV[4], 1, -2) .. ',"registered_at":"' .. registered_at .. '"}'
redis.call('HSET', services, name, stored)
redis.call('ZADD', heartbeats, now, name)
local instance = instance_json(stored, now, now, ttl)
publish(channel, kind, name, now, instance)
return instance
