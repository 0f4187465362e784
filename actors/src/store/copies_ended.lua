-- How a first copy ended (store/copies.rs), for the scripts that end later copies (this text
-- is prepended to copies_end.lua and drain_waiting.lua): `1` accepted by MS4, `0`
-- dead-lettered, nil not yet (or no longer known), from the day hashes `days`, newest first.
local function first_copy_ended(days, key)
  for _, day in ipairs(days) do
    local state = redis.call('HGET', day, key)
    if state then
      return state
    end
  end
  return nil
end

