-- mailgate schema v10: the dashboard's search by recipient (src/mailgate/ui/) walks one
-- address's messages newest first from this index alone, a page at a time, however many
-- messages the address has. It serves every read of recipients_address (address = ?)
-- too, so it replaces that index: the write path keeps one index on the address.
CREATE INDEX recipients_address_message ON recipients (address, message_id);
DROP INDEX recipients_address;
