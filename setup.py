"""The one thing pyproject.toml cannot say: receiver._fastpath, the receive loop's C part.

Optional: where it cannot be built (not Linux, no C compiler or Python headers) the
install goes on without it and the receiver runs its pure-Python path, which is correct
but slower (see receiver/_fastpath.c and README "Sizing").
"""

import sys

from setuptools import Extension, setup

extensions = []
if sys.platform.startswith("linux"):
    extensions.append(
        Extension(
            "receiver._fastpath",
            sources=["receiver/_fastpath.c"],
            extra_compile_args=[
                "-O2",
                "-std=gnu11",
                "-Wall",
                "-Wextra",
                "-Wno-missing-field-initializers",
                "-Wno-cast-function-type",
            ],
            optional=True,
        )
    )
    # The packet index's per-record work (receiver/_packet_index.c); optional likewise:
    # receiver.packet_index has the same in Python.
    extensions.append(
        Extension(
            "receiver._packet_index",
            sources=["receiver/_packet_index.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra"],
            optional=True,
        )
    )

setup(ext_modules=extensions)
