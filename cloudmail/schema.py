"""The store's schema as numbered migrations; never edit one that has shipped, add the next."""

MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE domains (
            name TEXT PRIMARY KEY,
            created TEXT NOT NULL,
            dkim_selector TEXT NOT NULL DEFAULT 'cloudmail',
            dkim_private_key TEXT,
            relay_host TEXT,
            relay_port INTEGER,
            relay_username TEXT,
            relay_password TEXT,
            relay_tls TEXT NOT NULL DEFAULT 'starttls',
            masquerade INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE users (
            username TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            display_name TEXT NOT NULL DEFAULT '',
            created TEXT NOT NULL
        )""",
        """CREATE TABLE groups (
            name TEXT PRIMARY KEY,
            created TEXT NOT NULL
        )""",
        """CREATE TABLE group_members (
            group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
            username TEXT NOT NULL REFERENCES users(username) ON DELETE CASCADE,
            PRIMARY KEY (group_name, username)
        )""",
        """CREATE TABLE mailboxes (
            local TEXT NOT NULL,
            domain TEXT NOT NULL REFERENCES domains(name),
            owner_type TEXT NOT NULL CHECK (owner_type IN ('user', 'group', 'app')),
            owner TEXT NOT NULL,
            app_password_hash TEXT,
            created TEXT NOT NULL,
            PRIMARY KEY (local, domain)
        )""",
        "CREATE INDEX mailboxes_by_owner ON mailboxes(owner_type, owner)",
        """CREATE TABLE aliases (
            local TEXT NOT NULL,
            domain TEXT NOT NULL REFERENCES domains(name),
            mailbox_local TEXT NOT NULL,
            mailbox_domain TEXT NOT NULL,
            created TEXT NOT NULL,
            PRIMARY KEY (local, domain),
            FOREIGN KEY (mailbox_local, mailbox_domain)
                REFERENCES mailboxes(local, domain) ON DELETE CASCADE
        )""",
        "CREATE INDEX aliases_by_mailbox ON aliases(mailbox_local, mailbox_domain)",
        """CREATE TABLE catchall (
            domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
            mailbox_local TEXT NOT NULL,
            mailbox_domain TEXT NOT NULL,
            PRIMARY KEY (domain, mailbox_local, mailbox_domain),
            FOREIGN KEY (mailbox_local, mailbox_domain)
                REFERENCES mailboxes(local, domain) ON DELETE CASCADE
        )""",
    ],
    [
        # Keys besides the domain's main one: an Ed25519 key signing next to it (RFC 8463),
        # and retired keys still published after a rotation until the operator removes them.
        """CREATE TABLE dkim_keys (
            domain TEXT NOT NULL REFERENCES domains(name) ON DELETE CASCADE,
            selector TEXT NOT NULL,
            private_key TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('ed25519', 'retired')),
            created TEXT NOT NULL,
            PRIMARY KEY (domain, selector)
        )""",
    ],
]
