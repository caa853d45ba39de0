"""Client-side cryptography (never imported by the server).

vodozemac (audited Olm/Megolm/SAS) and PyNaCl (argon2id, SecretBox,
Ed25519) do the work; this package wraps them behind a small API so the
rest of the client never handles a vodozemac type.
"""
