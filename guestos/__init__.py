"""Guest operating systems: the OS types Vapor knows and the osinfo-db catalogue.

Below both apps: the ISO library classifies and checks the media it keeps,
and the VMs check the variant they are asked for and name it in the domain,
with the same catalogue. It imports neither app, so the arrows stay
vms -> isos -> guestos.
"""
