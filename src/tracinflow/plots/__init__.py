"""Pictures: every function takes tables and returns a matplotlib ``Figure``; the stages save them."""
