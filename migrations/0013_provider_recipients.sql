-- How many recipients the provider says it took (apicontrol's num_recipients), beside how many
-- were sent: a difference is shown on the message and logged (issue 15).
ALTER TABLE messages ADD COLUMN provider_recipients integer;
