"""Sieve (RFC 5228): the filters users write, run on every local delivery."""
