-- Continue for a mailbox with room, replycode for a full one, in one transaction.
local ok, err = pcall(function()
  local conn = mt.connect("inet:" .. port .. "@127.0.0.1", 20, 0.1)
  if conn == nil then error("cannot connect") end
  if mt.negotiate(conn, nil, nil, nil) ~= nil then error("negotiation failed") end
  if not mt.test_option(conn, SMFIP_NOCONNECT) then
    if mt.conninfo(conn, "client.example.org", "192.0.2.10") ~= nil then error("conninfo failed") end
  end
  if mt.mailfrom(conn, "<sender@example.net>", "SIZE=100") ~= nil then error("mailfrom failed") end
  if mt.rcptto(conn, "<full@example.com>") ~= nil then error("rcptto full failed") end
  if mt.getreply(conn) ~= SMFIR_REPLYCODE then error("full@: expected SMFIR_REPLYCODE") end
  if mt.rcptto(conn, "<room@example.com>") ~= nil then error("rcptto room failed") end
  if mt.getreply(conn) ~= SMFIR_CONTINUE then error("room@: expected SMFIR_CONTINUE") end
  if mt.rcptto(conn, "<Full+tag@Example.COM>") ~= nil then error("rcptto full+tag failed") end
  if mt.getreply(conn) ~= SMFIR_REPLYCODE then error("Full+tag@: expected SMFIR_REPLYCODE") end
  mt.disconnect(conn)
end)
if not ok then print("FAIL: " .. tostring(err)); os.exit(1) end
print("OK")
