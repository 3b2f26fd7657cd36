-- wrk script: HTTP/1.1 pipelining. Each write carries DEPTH requests (the first script
-- argument, default 16); wrk counts every response. Usage:
--   wrk -t2 -c100 -d10s -s wrk/pipeline.lua http://127.0.0.1:3000/v1/avatar -- 16
local batch

init = function(args)
  local depth = tonumber(args[1]) or 16
  local requests = {}
  for i = 1, depth do
    requests[i] = wrk.format(nil)
  end
  batch = table.concat(requests)
end

request = function()
  return batch
end
