"""Backups encrypted to public recipients in age's format: a hypervisor can write them, never read them.

``keys`` holds age's X25519 recipients and identities (``bech32`` their
encoding), ``age`` the file format itself, ``opened`` the reading of one.
The cryptography is OpenSSL's libcrypto: ChaCha20-Poly1305, X25519 and the
manifests' Ed25519 signatures (``signing``) through its EVP interface
(``evp``), HKDF and HMAC from the standard library.
"""
