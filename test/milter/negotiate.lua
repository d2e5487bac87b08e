-- Negotiation with miltertest's v6 defaults: the milter must agree and not skip RCPT.
local ok, err = pcall(function()
  local conn = mt.connect("inet:" .. port .. "@127.0.0.1", 20, 0.1)
  if conn == nil then error("cannot connect") end
  if mt.negotiate(conn, nil, nil, nil) ~= nil then error("negotiation failed") end
  if mt.test_option(conn, SMFIP_NORCPT) then error("the milter skips RCPT") end
  if not mt.test_option(conn, SMFIP_NOBODY) then error("the milter asks for the body") end
  if not mt.test_option(conn, SMFIP_NOHDRS) then error("the milter asks for headers") end
  if mt.test_action(conn, SMFIF_ADDHDRS) or mt.test_action(conn, SMFIF_CHGBODY) then error("the milter asks to modify messages") end
  mt.disconnect(conn)
end)
if not ok then print("FAIL: " .. tostring(err)); os.exit(1) end
print("OK")
