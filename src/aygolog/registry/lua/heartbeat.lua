-- Refresh an instance's heartbeat.
-- KEYS[1] services hash, KEYS[2] heartbeats zset, KEYS[3] expired set
-- ARGV[1] events channel, ARGV[2] ttl ms, ARGV[3] name
-- Emits 'registered' when the instance had expired (it came back).
-- Returns the instance as JSON, or false when no such instance is registered.
local services, heartbeats, expired = KEYS[1], KEYS[2], KEYS[3]
local channel, ttl, name = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local stored = redis.call('HGET', services, name)
if not stored then
  return false
end
local now = now_ms()
local heartbeat = tonumber(redis.call('ZSCORE', heartbeats, name))
local was_announced = redis.call('SREM', expired, name) == 1
redis.call('ZADD', heartbeats, now, name)
local instance = instance_json(stored, now, now, ttl)
if was_announced or not heartbeat or now - heartbeat > ttl then
  publish(channel, 'registered', name, now, instance)
end
return instance
