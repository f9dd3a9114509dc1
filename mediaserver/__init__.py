"""Media plane of the consultation server: an SFU forwarding RTP bytes over aiortc transports."""
