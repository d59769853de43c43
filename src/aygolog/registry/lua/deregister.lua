-- Remove an instance.
-- KEYS[1] services hash, KEYS[2] heartbeats zset, KEYS[3] expired set
-- ARGV[1] events channel, ARGV[2] ttl ms, ARGV[3] name
-- Emits 'deregistered' with the instance as it was. Returns 1, or 0 when there was none.
local services, heartbeats, expired = KEYS[1], KEYS[2], KEYS[3]
local channel, ttl, name = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local stored = redis.call('HGET', services, name)
if not stored then
  return 0
end
local now = now_ms()
local heartbeat = tonumber(redis.call('ZSCORE', heartbeats, name)) or now
redis.call('HDEL', services, name)
redis.call('ZREM', heartbeats, name)
redis.call('SREM', expired, name)
publish(channel, 'deregistered', name, now, instance_json(stored, heartbeat, now, ttl))
return 1
