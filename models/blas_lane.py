"""One lane for serving maths that runs on several threads, so a scorer's memory does not creep.

OpenBLAS, numpy's BLAS, gives each level-3 or LAPACK call in flight (and each large
matrix-vector product) a 32 MB work buffer from a pool. It maps a new buffer the first
time that many calls overlap, and never unmaps it. numpy releases the GIL inside these
calls. So a scorer's HTTP threads, its Kafka transport and its policy follower overlap
now and then, and each new record of overlap maps another 32 MB that stays mapped
(resident only as far as the calls touched it).

A 10-minute soak traced with memray showed this. An HTTP thread mapped a second buffer
at 362 s (``feats.T @ feats``, OpenBLAS's dsyrk, in the posterior). Four threads each
multiplying (100 x 64) by (64 x 32) map four buffers.

A request's maths in the scorer and a version's prior inverse hold this lock, so at
most one such call is in flight and one buffer serves them all. The maths is a few
tens of microseconds, and the Python around it holds the GIL anyway.
"""

from __future__ import annotations

import threading

BLAS_LANE = threading.Lock()
