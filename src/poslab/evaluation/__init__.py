"""The measurements: perplexity by eval length under each protocol (protocols.py), passkey
retrieval (passkey.py), the summaries every record and report shares (summaries.py), and the
settings they take (settings.py). New kinds of measurement go here."""
