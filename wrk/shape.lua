-- wrk script: one request shape per run, the first script argument (default plain):
--   plain          GET of the URL's path
--   cache-buster   GET with ?cb=N, N counting up (as k6 and browsers add)
--   noop-header    x-m2-behaviour: status=200 (a behaviour header that changes nothing)
--   http10         HTTP/1.0 with Connection: keep-alive (ApacheBench -k)
--   close          Connection: close on every request (a new connection each time)
-- Usage: wrk -t2 -c50 -d10s -s wrk/shape.lua http://127.0.0.1:3000/v1/avatar -- close
local shape
local counter = 0

init = function(args)
  shape = args[1] or "plain"
  if shape == "noop-header" then
    wrk.headers["x-m2-behaviour"] = "status=200"
  elseif shape == "close" then
    wrk.headers["Connection"] = "close"
  elseif shape ~= "plain" and shape ~= "cache-buster" and shape ~= "http10" then
    error("unknown shape " .. shape)
  end
end

request = function()
  if shape == "cache-buster" then
    counter = counter + 1
    return wrk.format(nil, wrk.path .. "?cb=" .. counter)
  elseif shape == "http10" then
    return "GET " .. wrk.path .. " HTTP/1.0\r\nHost: " .. wrk.host .. "\r\nConnection: keep-alive\r\n\r\n"
  end
  return wrk.format(nil)
end
