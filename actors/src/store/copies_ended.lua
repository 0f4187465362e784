-- How later copies of a message end (store/copies.rs), for the scripts that meet them (this
-- text is prepended to copies_end.lua, drain_waiting.lua and poll_page.lua).

-- How the first copy under `key` ended: `1` accepted by MS4, `0` dead-lettered, nil not yet
-- (or no longer known), from the day hashes `days`, newest first.
local function first_copy_ended(days, key)
  for _, day in ipairs(days) do
    local state = redis.call('HGET', day, key)
    if state then
      return state
    end
  end
  return nil
end

-- Ends one later copy whose follow-up is `source`, `mailbox`, `id`: queued on `stream` now if
-- its first copy was accepted (returns 1); if it was dead-lettered (3), its dead-letter end is
-- queued (`end` = `dead_letter`: the worker applies the source's after_dead_letter, nothing
-- with `leave`), so the copy ends as the first did; else kept in the `waiting` hash under `key`
-- (once: a follow-up already waiting is not added again) until the first copy ends (2).
local function end_copy(days, waiting, stream, key, source, mailbox, id, now)
  local state = first_copy_ended(days, key)
  if state == '1' then
    redis.call('XADD', stream, '*', 'mailbox', mailbox, 'message_id', id)
    return 1
  elseif state == '0' then
    redis.call('XADD', stream, '*', 'mailbox', mailbox, 'message_id', id, 'end', 'dead_letter')
    return 3
  end
  local list = {}
  local held = redis.call('HGET', waiting, key)
  if held then
    list = cjson.decode(held)
  end
  for _, f in ipairs(list) do
    if f[1] == source and f[2] == mailbox and f[3] == id then
      return 2
    end
  end
  table.insert(list, {source, mailbox, id, tonumber(now)})
  redis.call('HSET', waiting, key, cjson.encode(list))
  return 2
end

