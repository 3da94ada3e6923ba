"""Correcting history (issue 24): the stored raw callbacks read again with today's normalisers,
compared with what they gave, and, when applied, what they now say replacing what they said."""
