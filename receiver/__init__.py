"""Capture and decoding of Juniper jmirror streams.

The decoding core (:mod:`receiver.jmirror`, :mod:`receiver.pcap_reader`) imports no Django,
so it can be tested and benchmarked alone; the management commands are the Django shell
around it.
"""
