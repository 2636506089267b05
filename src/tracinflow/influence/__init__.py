"""Influence's domain: ghost factors of the head's Linear layers, the exact TracIn kernel and its
top-k, shards and their merge, self-influence."""
