"""Checks on what arrives: each one gathers evidence and returns a typed result, nothing more.

As in mox, a verification function is pure: it takes the resolver (`cloudmail.dns.AsyncResolver`)
and its inputs as arguments, has no side effects, and reports a status with the evidence behind
it. One place (`policy.engine.analyze()`) later turns the evidence into accept / reject / junk.

- `dnsbl` — DNS blocklists of the client IP (RFC 5782).
- `iprev` — forward-confirmed reverse DNS of the client IP (RFC 8601 section 3).

A DNS timeout or server failure is a "temperror" in every check; it is recorded but never rejects
mail by itself.
"""
