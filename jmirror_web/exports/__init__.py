"""Evidence exports: how packets leave the system.

:mod:`.engine` turns stored capture files into one pcap, pcapng or zip stream, with the
SHA-256, size and packet count computed while streaming (no Django). The rest of the
package is the Django side: the Export record, views, API, manifests and verification.
"""
