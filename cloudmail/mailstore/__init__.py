"""The mail store: Maildir++ folders on disk, delivered to durably and read by IMAP."""
