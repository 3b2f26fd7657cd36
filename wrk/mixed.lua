-- wrk script: a mix of plain and behaviour-injected requests, for bench/soak.
--   94% plain GET /v1/avatar (the fast path)
--    3% delay=uniform(1ms,20ms)      1% status=503      1% count=100
--    1% fault=close (the client sees a closed connection: counted as a socket error)
local paths = {}

init = function(args)
  math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)"), 16) or 0))
end

request = function()
  local r = math.random(100)
  local path = "/v1/avatar"
  if r <= 3 then
    path = path .. "?delay=uniform(1ms,20ms)"
  elseif r == 4 then
    path = path .. "?status=503"
  elseif r == 5 then
    path = path .. "?count=100"
  elseif r == 6 then
    path = path .. "?fault=close"
  end
  return wrk.format("GET", path)
end
