"""Opt-outs: the suppression list's API (the keywords are applied where replies are stored, and
sends check the list: migration 0024)."""
