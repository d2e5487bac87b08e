-- Several messages on one connection, with ABORTs between (and repeated), as Postfix does.
local ok, err = pcall(function()
  local conn = mt.connect("inet:" .. port .. "@127.0.0.1", 20, 0.1)
  if conn == nil then error("cannot connect") end
  if mt.negotiate(conn, nil, nil, nil) ~= nil then error("negotiation failed") end
  if not mt.test_option(conn, SMFIP_NOCONNECT) then
    if mt.conninfo(conn, "client.example.org", "192.0.2.10") ~= nil then error("conninfo failed") end
  end
  for i = 1, 5 do
    if mt.mailfrom(conn, "<sender" .. i .. "@example.net>") ~= nil then error("mailfrom " .. i) end
    if mt.rcptto(conn, "<room@example.com>") ~= nil then error("rcptto room " .. i) end
    if mt.getreply(conn) ~= SMFIR_CONTINUE then error("room@ in message " .. i .. ": expected continue") end
    if mt.rcptto(conn, "<full@example.com>") ~= nil then error("rcptto full " .. i) end
    if mt.getreply(conn) ~= SMFIR_REPLYCODE then error("full@ in message " .. i .. ": expected replycode") end
    if mt.abort(conn) ~= nil then error("abort " .. i) end
    if mt.abort(conn) ~= nil then error("second abort " .. i) end
  end
  mt.disconnect(conn)
end)
if not ok then print("FAIL: " .. tostring(err)); os.exit(1) end
print("OK")
