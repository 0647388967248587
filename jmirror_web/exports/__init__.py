"""Evidence exports: how packets leave the system.

:mod:`.engine` turns stored capture files into one pcap, pcapng or zip stream, with the
SHA-256, size and packet count computed while streaming (no Django), from what
:mod:`.request` describes, keeping what :mod:`.filtering` selects, reading with
:mod:`.reading` and writing with :mod:`.writers`. The rest of the package is the Django
side: the Export record, views, API, manifests and verification.
"""
