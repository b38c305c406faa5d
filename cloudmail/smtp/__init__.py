"""The SMTP service: our own hardened ESMTP server protocol and its DATA spool.

- `replies`   SMTP replies with RFC 3463 enhanced status codes, as named constants (bytes on
              the wire).
- `paths`     a small pure parser for RFC 5321 4.1.2 paths and ESMTP parameters (RFC 6531
              UTF-8 addresses included).
- `spool`     the DATA sink: CRLF-only, dot-unstuffing, size-capped, written to disk and fsynced
              (RFC 5321 2.3.8, 4.5.2).
- `protocol`  `SmtpServer` (on Twisted's `LineReceiver`, not `twisted.mail.smtp.ESMTP`, whose
              defects are listed in DESIGN.md), `SmtpFactory` and the `ISmtpBackend` seam that
              holds all policy.
"""
