"""The address book: domains, mailboxes, aliases, catch-all and per-domain settings."""
