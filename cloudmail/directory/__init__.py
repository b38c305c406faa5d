"""Who the users are: the built-in directory, LDAP, and logging in with a mailbox address."""
