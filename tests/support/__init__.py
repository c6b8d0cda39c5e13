"""Helpers shared by the test modules: one copy each, imported where needed.

`images`: disk images made and read with qemu-img, file digests.
`factories`: factory-boy factories for the rows tests build by hand.
"""
