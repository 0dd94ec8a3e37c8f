"""Real Linux guests for the lab: a kit made from Debian's packages, and domains that boot it from RBD.

Lab code: the tests and the demo use it, nothing in the storage path imports it.
"""
