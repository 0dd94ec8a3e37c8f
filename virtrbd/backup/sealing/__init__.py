"""Backups encrypted to public recipients in age's format: a hypervisor can write them, never read them.

``keys`` holds age's X25519 recipients and identities (``bech32`` their
encoding), ``age`` the file format itself.  The cryptography is OpenSSL's,
through the ``cryptography`` package (Debian's python3-cryptography).
"""
