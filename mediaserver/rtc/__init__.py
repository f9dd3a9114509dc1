"""The seam into aiortc's and aioice's internals: the only package that reaches them.

Every private attribute or method of an aiortc or aioice object, every override or
monkeypatch of theirs, and every import of a module of theirs that is not their public API
(`aiortc.sdp`, `aiortc.codecs`, `aiortc.jitterbuffer`, `aiortc.rtp`, `aioice.ice`) lives
here, behind functions the node, the Python client (`signaling/client.py`) and the load
generator (`loadtest/`) call. aiortc is pinned to 1.16.*; tests/test_seam*.py fail loudly
when a new aiortc or aioice moves one of these names.

- `tap.py`: the server's peer connection (`ServerPeerConnection`), byte-level media
  (`MediaTransport`) and transceiver accessors;
- `batch.py`: the batched UDP GSO send path; `ice.py`: the node's ICE sockets;
  `icerestart.py`: ICE restart; `bundle.py`, `sdp.py`: SDP rewrites and aiortc's parser;
- `peer.py`: what any aiortc client needs (bundle fix, inbound watch, sender switch);
  `jitter.py`: the client's skipping jitter buffer; `media.py`: aiortc's codecs, RTP packet
  and jitter buffer used as a library (device ingest).
"""
