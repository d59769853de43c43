-- Purge long-expired instances, then announce the newly expired ones, exactly once each:
-- the expired set remembers who was announced, and a script runs alone, so concurrent sweeps
-- from several load balancers cannot announce the same instance twice.
-- KEYS[1] services hash, KEYS[2] heartbeats zset, KEYS[3] expired set
-- ARGV[1] events channel, ARGV[2] ttl ms, ARGV[3] purge_after ms
-- Emits 'deregistered' for each purged instance and 'expired' for each newly expired one.
-- Returns the names newly expired.
local services, heartbeats, expired = KEYS[1], KEYS[2], KEYS[3]
local channel, ttl, purge_after = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = now_ms()

-- Expired for longer than purge_after: now - heartbeat - ttl > purge_after.
local gone = redis.call('ZRANGEBYSCORE', heartbeats, '-inf',
  string.format('(%d', now - ttl - purge_after), 'WITHSCORES')
for i = 1, #gone, 2 do
  local name, heartbeat = gone[i], tonumber(gone[i + 1])
  local stored = redis.call('HGET', services, name)
  redis.call('HDEL', services, name)
  redis.call('ZREM', heartbeats, name)
  redis.call('SREM', expired, name)
  if stored then
    publish(channel, 'deregistered', name, now, instance_json(stored, heartbeat, now, ttl))
  end
end

-- Expired: now - heartbeat > ttl.
local stale = redis.call('ZRANGEBYSCORE', heartbeats, '-inf',
  string.format('(%d', now - ttl), 'WITHSCORES')
local newly = {}
for i = 1, #stale, 2 do
  local name = stale[i]
  if redis.call('SADD', expired, name) == 1 then
    local stored = redis.call('HGET', services, name)
    if stored then
      newly[#newly + 1] = name
      publish(channel, 'expired', name, now, instance_json(stored, tonumber(stale[i + 1]), now, ttl))
    end
  end
end
return newly
