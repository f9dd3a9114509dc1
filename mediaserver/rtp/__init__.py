"""RTP/RTCP byte-level helpers and the seam into aiortc (tap)."""
