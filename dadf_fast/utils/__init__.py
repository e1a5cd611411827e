"""Helpers every layer may use: atomic, never-overwriting file output (:mod:`.io`)."""
