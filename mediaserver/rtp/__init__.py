"""RTP/RTCP at the byte level: RTCP packets, keyframe detection, receive statistics (no aiortc)."""
