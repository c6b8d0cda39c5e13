"""Helpers shared by the test modules: one copy each, imported where needed.

`api`: the create-enhanced call most VM tests make.
`factories`: factory-boy factories for the rows tests build by hand.
`images`: disk images made and read with qemu-img, file digests.
`isos`: small real ISO files built on the spot, and registering one.
`servers`: a loopback HTTP server that answers (or misbehaves) on cue.
`threads`: racing calls against each other (the PostgreSQL tests).

Fixtures stay in the conftest.py files; what is here is plain functions and classes.
"""
