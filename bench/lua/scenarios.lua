-- Request generator for every benchmark scenario (one script, the scenario is an argument).
--
--   wrk -c32 -d10s -s bench/lua/scenarios.lua http://127.0.0.1:PORT -- SCENARIO DATA_DIR [DEEP_PATH]
--
-- SCENARIO   get | list | list-deep | list-filtered | list-labels | list-search | create |
--            patch | toggle | mixed
-- DATA_DIR   holds ids.txt ("user_id task_id" per line) and users.txt (one user id per line);
--            labels.txt ("user_id label,label,..."), filtered.txt ("user_id label_id": a label
--            on open overdue tasks of that user) and search.txt ("user_id word"), written by
--            the harness from the database
-- DEEP_PATH  list-deep only: the full path and query of the deep page (its cursor came from
--            walking this very server, so it is in the server's own format)
--
-- done() prints one line "BENCH_JSON {...}" that the harness parses: request count, latency
-- percentiles, socket errors, and non-2xx responses counted in response() on every thread.

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_number", thread_count)
  table.insert(threads, thread)
end

local function read_lines(path)
  local lines = {}
  local file = assert(io.open(path, "r"), "cannot open " .. path)
  for line in file:lines() do
    if line ~= "" then
      table.insert(lines, line)
    end
  end
  file:close()
  assert(#lines > 0, path .. " is empty")
  return lines
end

local json_headers = { ["Content-Type"] = "application/json" }
local create_body = '{"title":"created by wrk","description":"bench"}'
local patch_body = '{"title":"patched by wrk"}'

local scenario, deep_path
local tasks = {} -- { {user, task}, ... }
local users = {}
local pairs_of = {} -- labels.txt, filtered.txt, search.txt: { {user, value}, ... }

local function random_task()
  return tasks[math.random(#tasks)]
end

local builders = {}

builders["get"] = function()
  local t = random_task()
  return wrk.format("GET", "/api/" .. t[1] .. "/tasks/" .. t[2])
end

builders["list"] = function()
  return wrk.format("GET", "/api/" .. users[math.random(#users)] .. "/tasks?limit=50")
end

builders["list-deep"] = function()
  return wrk.format("GET", deep_path)
end

-- A page of open overdue tasks carrying one label (one the user has on such tasks).
builders["list-filtered"] = function()
  local p = pairs_of[math.random(#pairs_of)]
  return wrk.format("GET", "/api/" .. p[1] .. "/tasks?limit=50&due=overdue&labels_any=" .. p[2])
end

-- A page of tasks that carry labels: any of the user's labels.
builders["list-labels"] = function()
  local p = pairs_of[math.random(#pairs_of)]
  return wrk.format("GET", "/api/" .. p[1] .. "/tasks?limit=50&labels_any=" .. p[2])
end

-- Search: a common, a middling or a rare word in a random user's tasks.
builders["list-search"] = function()
  local p = pairs_of[math.random(#pairs_of)]
  return wrk.format("GET", "/api/" .. p[1] .. "/tasks?limit=50&q=" .. p[2])
end

local pair_files = {
  ["list-filtered"] = "filtered.txt",
  ["list-labels"] = "labels.txt",
  ["list-search"] = "search.txt",
}

builders["create"] = function()
  local path = "/api/" .. users[math.random(#users)] .. "/tasks"
  return wrk.format("POST", path, json_headers, create_body)
end

builders["patch"] = function()
  local t = random_task()
  return wrk.format("PATCH", "/api/" .. t[1] .. "/tasks/" .. t[2], json_headers, patch_body)
end

builders["toggle"] = function()
  local t = random_task()
  return wrk.format("PATCH", "/api/" .. t[1] .. "/tasks/" .. t[2] .. "/complete")
end

-- 80% reads, 20% writes.
builders["mixed"] = function()
  local r = math.random(100)
  if r <= 60 then
    return builders["get"]()
  elseif r <= 80 then
    return builders["list"]()
  elseif r <= 90 then
    return builders["patch"]()
  elseif r <= 95 then
    return builders["toggle"]()
  end
  return builders["create"]()
end

function init(args)
  scenario = args[1]
  local data_dir = args[2]
  deep_path = args[3]
  assert(builders[scenario], "unknown scenario " .. tostring(scenario))
  assert(scenario ~= "list-deep" or deep_path, "list-deep needs DEEP_PATH")
  for _, line in ipairs(read_lines(data_dir .. "/ids.txt")) do
    local user, task = line:match("^(%S+)%s+(%S+)$")
    table.insert(tasks, { user, task })
  end
  users = read_lines(data_dir .. "/users.txt")
  if pair_files[scenario] then
    for _, line in ipairs(read_lines(data_dir .. "/" .. pair_files[scenario])) do
      local user, value = line:match("^(%S+)%s+(%S+)$")
      table.insert(pairs_of, { user, value })
    end
  end
  math.randomseed(os.time() * 100 + (thread_number or 0))
  non2xx = 0
  last_bad_status = 0
end

function request()
  return builders[scenario]()
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    last_bad_status = status
  end
end

function done(summary, latency, requests)
  local bad, last = 0, 0
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
    local status = thread:get("last_bad_status")
    if status ~= 0 then
      last = status
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"non2xx":%d,"last_bad_status":%d,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"timeouts":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, bad, last,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max
  ))
end
